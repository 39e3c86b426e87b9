"""Scale-out for real: the committed deploy/nginx/nginx.conf in front of two rosetta-serve replicas.

What this proves, on loopback, with the machine's nginx (installed with apt-get if missing):
- the committed config is valid nginx and proxies gRPC (h2c) to the replicas; only addresses,
  ports and file paths are changed for the test (and, on nginx older than 1.25.1, which lacks
  `http2 on;`, the listen line says `http2` instead);
- calls are balanced over both replicas, whether each call opens its own connection or all
  share one long-lived channel: nginx balances calls, not connections;
- a request over nginx's default 1 MiB body limit still reaches a replica;
- SIGTERM to a replica while clients keep calling costs them nothing: its in-flight call
  completes, new calls go to the other replica (nginx retries a refused connection on the next
  upstream) and the stopped replica exits 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc
from tests.builders import tiny_pairs
from tests.conftest import ROOT, Server, wait_for

pytestmark = pytest.mark.slow  # real server processes (pytest -m "not slow" skips them)

CONFIG = ROOT / "deploy" / "nginx" / "nginx.conf"
PAIRS = tiny_pairs()
# nginx lives in sbin, which is not on every user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def find_nginx() -> str | None:
    return shutil.which("nginx", path=SEARCH_PATH)


@pytest.fixture(scope="session")
def nginx() -> str:
    """The nginx binary; installed with apt-get when missing, skipped (saying why) only where it cannot be."""
    if found := find_nginx():
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("nginx is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("nginx is not installed; installing it (apt-get install nginx-light) needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["apt-get", "-q", "-y", *args], env=env, capture_output=True, text=True,
                                  timeout=600)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 1, "", "apt-get took over 10 minutes")

    failure = ""
    # Lists may be missing (fresh containers): update only when a first attempt fails.
    for update in (False, True):
        if update and (done := apt_get("update")).returncode != 0:
            failure = done.stderr
            break
        # nginx-light is the small build on Debian 12; later releases only have nginx.
        for package in ("nginx-light", "nginx"):
            done = apt_get("install", "--no-install-recommends", package)
            if done.returncode == 0 and (found := find_nginx()):
                return found
            failure = done.stderr
    pytest.skip(f"nginx is not installed and apt-get could not install it: {failure.strip()[-500:]}")


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30).stderr
    return tuple(map(int, re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out).groups()))


def render(config: str, replica_ports: list[int], port: int, version: tuple[int, ...]) -> str:
    """The committed config on loopback: replicas and listen port replaced, pid and temp files in
    nginx's prefix folder (-p); every other directive as committed."""
    def per_replica(line: re.Match) -> str:
        """The one `server replica:50051 ...;` line: a line per replica, same parameters but
        `resolve`, which is for names (and needs nginx >= 1.27.3)."""
        indent, params = line.group(1), re.sub(r"\s+resolve\b", "", line.group(2))
        return "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in replica_ports)

    config, replaced = re.subn(r"^([ \t]*)server[ \t]+replica:50051([^;]*);[^\n]*\n", per_replica, config,
                               flags=re.M)
    assert replaced == 1 and "listen 50051;" in config and not re.search(r"^\s*pid\s", config, re.M)
    if version >= (1, 25, 1):
        config = config.replace("listen 50051;", f"listen 127.0.0.1:{port};")
    else:
        config = config.replace("listen 50051;", f"listen 127.0.0.1:{port} http2;")
        config = re.sub(r"^[ \t]*http2 on;[^\n]*\n", "", config, flags=re.M)
    temp = "".join(f"    {kind}_temp_path {kind}_temp;\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return "pid nginx.pid;\n" + config.replace("http {\n", "http {\n" + temp, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def replicas(service_repository) -> Iterator[list[Server]]:
    """Two rosetta-serve processes on the tiny model, each with its own metrics port."""
    servers = [Server(service_repository, "--grace-seconds", "30") for _ in range(2)]
    yield servers
    for s in servers:
        assert s.stop() == 0


@pytest.fixture
def proxy(nginx, replicas, tmp_path) -> Iterator[str]:
    """nginx running the rendered committed config in front of `replicas`; its address."""
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(render(CONFIG.read_text(), [r.port for r in replicas], port, nginx_version(nginx)))
    # -e: the error log before the config is read (else the compiled-in file, which may not exist).
    command = [nginx, "-c", str(config), "-p", str(tmp_path), "-e", "stderr", "-g", "daemon off;"]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    with open(tmp_path / "access.log", "w") as access, open(tmp_path / "error.log", "w") as errors:
        process = subprocess.Popen(command, stdout=access, stderr=errors)
    try:
        wait_for(lambda: accepts(port) or process.poll() is not None, 30)
        assert process.poll() is None, (tmp_path / "error.log").read_text()
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish open calls, then exit
        process.wait(timeout=30)
        print("nginx error log:", (tmp_path / "error.log").read_text(), sep="\n")  # shown when a test fails


def served(replica: Server, method: str = "Translate") -> float:
    """Calls of `method` the replica answered OK, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.started['metrics_port']}/metrics", timeout=10) as page:
        text = page.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "rosetta_requests_total" and sample.labels == {"method": method, "code": "OK"})


def cpu_seconds(replica: Server) -> float:
    """CPU time the replica's process has used so far (Linux /proc: utime + stime)."""
    fields = Path(f"/proc/{replica.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def translate(channel: grpc.Channel, i: int) -> bool:
    """One Translate call; whether it got the right translation."""
    source, target = PAIRS[i % len(PAIRS)]
    stub = translator_pb2_grpc.TranslatorStub(channel)
    return stub.Translate(pb.TranslateRequest(text=source), timeout=60).translation == target


def own_channel(address: str) -> grpc.Channel:
    """A channel with its own connection (gRPC otherwise shares subchannels between channels)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_calls_are_balanced_over_both_replicas(replicas, proxy):
    before = [served(r) for r in replicas]
    for i in range(10):
        with own_channel(proxy) as channel:
            assert translate(channel, i)
    separate = [served(r) for r in replicas]
    with grpc.insecure_channel(proxy) as channel:
        assert all(translate(channel, i) for i in range(10))
    shared = [served(r) for r in replicas]
    assert sum(separate) - sum(before) == 10 and sum(shared) - sum(separate) == 10
    assert all(b > a for a, b in zip(before, separate)), f"new connection per call: {before} -> {separate}"
    assert all(b > a for a, b in zip(separate, shared)), f"one long-lived channel: {separate} -> {shared}"


def test_a_request_over_nginx_default_body_limit_reaches_a_replica(replicas, proxy):
    # About 1.8 MB; the replica refuses it for its first text, which shows it got there (over the
    # default 1 MiB limit nginx would answer 413 itself).
    request = pb.TranslateBatchRequest(texts=[""] + ["x" * 9000] * 200)
    with grpc.insecure_channel(proxy) as channel, pytest.raises(grpc.RpcError) as caught:
        translator_pb2_grpc.TranslatorStub(channel).TranslateBatch(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text 0: text is empty" in caught.value.details()


def test_a_replica_stopped_with_sigterm_costs_clients_nothing(replicas, proxy):
    texts = [source for source, _ in PAIRS] * 8
    long_work = pb.TranslateBatchRequest(texts=texts, options=pb.DecodingOptions(beam_size=8, min_length=50))
    stop, answers, errors = threading.Event(), [], []

    def client(shared: bool) -> None:
        """Translate without pause through nginx: over one channel, or a new connection per call."""
        with grpc.insecure_channel(proxy) as channel:
            i = 0
            while not stop.is_set():
                try:
                    with nullcontext(channel) if shared else own_channel(proxy) as used:
                        answers.append((time.monotonic(), translate(used, i)))
                except grpc.RpcError as e:
                    errors.append((e.code(), e.details()))
                i += 1

    with ThreadPoolExecutor(3) as pool, grpc.insecure_channel(proxy) as channel:
        try:
            long_call = pool.submit(translator_pb2_grpc.TranslatorStub(channel).TranslateBatch, long_work, timeout=120)
            # The replica decoding the long call is the one using CPU: stop that one.
            time.sleep(0.2)
            cpu = [cpu_seconds(r) for r in replicas]
            time.sleep(0.3)
            used = [cpu_seconds(r) - c for r, c in zip(replicas, cpu)]
            stopping, staying = replicas if used[0] > used[1] else replicas[::-1]
            clients = [pool.submit(client, shared) for shared in (True, False)]
            wait_for(lambda: len(answers) >= 5, 60)
            assert not long_call.done(), "the long call should still be running when SIGTERM arrives"
            staying_before = served(staying)
            stopping.process.send_signal(signal.SIGTERM)
            assert stopping.process.wait(timeout=60) == 0
            exited = time.monotonic()
            wait_for(lambda: sum(t > exited for t, _ in answers) >= 20, 60)
        finally:
            stop.set()
        for c in clients:
            c.result()
        response = long_call.result()
    assert errors == []
    assert all(correct for _, correct in answers)
    assert len(response.translations) == len(texts)
    # The long call was answered, and not by the replica that stayed: the stopped one finished it.
    assert served(staying, "TranslateBatch") == 0
    assert served(staying) - staying_before >= sum(t > exited for t, _ in answers)
