"""Deployment files, checked offline: Dockerfile, docker-compose.yml, deploy/k8s, rosetta-healthcheck.

Neither a Docker engine nor a cluster is needed. The files are validated against the Compose
Specification and Kubernetes schemas, and every command, flag, ROSETTA_* variable, port, volume
and grace period in them is checked against the programs that will read them (their own
argument parsers, the server's configuration), so a flag renamed or a port changed in one place
fails here rather than in a container.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from concurrent import futures
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import metadata, resources
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client import TranslatorClient
from model.tsv import write_tsv
from server import healthcheck
from server.config import ServerConfig, env_name, parse_config
from server.runtime import load_manifest, versions
from tests.builders import tiny_pairs


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
ROSETTA_VARIABLES = {env_name(f.name) for f in fields(ServerConfig)}
SERVER_IMAGES = ("server", "server-gpu")
TORCH_INSTALLS = re.compile(r"torch|\[(train|export|dev|bench)\]")  # torch, or an extra that brings it


# ---- rosetta-healthcheck against a real in-process health service ---------------------------

@pytest.fixture
def health_server():
    """A grpc server running only the standard health service, on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_healthcheck_exits_0_only_while_the_server_says_serving(health_server, capsys):
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--address", address]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--address", address]) == 1
    assert healthcheck.main(["--address", address, "--service", "rosetta.v1.Translator"]) == 1  # unknown: NOT_FOUND
    assert capsys.readouterr().out.splitlines()[-1].endswith("NOT_FOUND")


def test_healthcheck_fails_within_its_timeout_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once the socket closes
    started = time.monotonic()
    assert healthcheck.main(["--address", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
    assert time.monotonic() - started < 3


def test_healthcheck_defaults_to_the_port_the_server_reads(monkeypatch):
    monkeypatch.setenv("ROSETTA_PORT", "6123")
    assert healthcheck.build_parser().parse_args([]).address == "127.0.0.1:6123"


# ---- the programs the deployment files run ---------------------------------------------------

def run_program(argv: list[str], environ: dict[str, str]) -> Any:
    """What `argv` would start with: the server's configuration, or another script's parsed flags.

    Fails the test (instead of exiting) when argv[0] is no console script of this project or its
    parser refuses the flags.
    """
    assert argv and argv[0] in SCRIPTS, f"{argv[:1]} is not a console script in pyproject.toml"
    try:
        if argv[0] == "rosetta-serve":
            return parse_config(argv[1:], environ)
        module = importlib.import_module(SCRIPTS[argv[0]].split(":")[0])
        return module.build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{argv[0]} refuses {argv[1:]} with {environ}")


def assert_server_environment(argv: list[str], environ: dict[str, str]) -> ServerConfig:
    """The server's configuration, after checking that every variable set is one it reads, and
    that no flag in the command silently overrides a variable with another value."""
    assert set(environ) <= ROSETTA_VARIABLES, f"not read by server/config.py: {set(environ) - ROSETTA_VARIABLES}"
    config = run_program(argv, environ)
    from_environment = parse_config([], environ)
    for f in fields(ServerConfig):
        if env_name(f.name) in environ:
            assert getattr(config, f.name) == getattr(from_environment, f.name), f"a flag overrides {env_name(f.name)}"
    return config


# ---- Dockerfile -----------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@cache
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, from the Dockerfile's logical lines."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in filter(None, map(str.strip, text.splitlines())):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            base, name = re.split(r"\s+AS\s+", re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest), flags=re.I)
            stage = stages[name] = Stage(name, base)
        elif stage is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stage.instructions.append((keyword, rest))
    return args, stages


def chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target and the stages it is built FROM, base first."""
    stage = stages[target]
    return (chain(stages, stage.base) if stage.base in stages else []) + [stage]


def reachable(stages: dict[str, Stage], target: str) -> set[str]:
    """Every stage whose work ends up in the target: its FROM chain and COPY --from sources."""
    seen: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for stage in chain(stages, name):
            todo.append(stage.name)
            sources = re.findall(r"--from=(\S+)", " ".join(rest for kw, rest in stage.instructions if kw == "COPY"))
            todo += [source for source in sources if source in stages]  # not other images
    return seen


def last(stages: dict[str, Stage], target: str, keyword: str) -> str:
    """The value of the last `keyword` instruction in effect for the target (USER, CMD...)."""
    values = [rest for stage in chain(stages, target) for kw, rest in stage.instructions if kw == keyword]
    assert values, f"{target} has no {keyword}"
    return values[-1]


def image_command(target: str) -> list[str]:
    command = json.loads(last(dockerfile()[1], target, "CMD"))
    assert isinstance(command, list), "CMD in exec form, so signals reach the program"
    return command


def image_workdir(target: str) -> PurePosixPath:
    return PurePosixPath(last(dockerfile()[1], target, "WORKDIR"))


def image_uid(target: str) -> int:
    _, stages = dockerfile()
    user = last(stages, target, "USER")
    runs = " ".join(rest for stage in chain(stages, target) for kw, rest in stage.instructions if kw == "RUN")
    found = re.search(rf"useradd\b[^&;]*--uid (\d+)[^&;]*\b{re.escape(user)}\b", runs)
    assert found, f"USER {user} of {target} is not created with a fixed uid"
    return int(found.group(1))


@pytest.mark.parametrize("target", SERVER_IMAGES)
def test_server_images_run_rosetta_serve_as_a_non_root_user_without_torch(target):
    _, stages = dockerfile()
    assert image_uid(target) > 0 and last(stages, target, "USER") not in ("root", "0")
    config = run_program(image_command(target), {})
    assert config.host == "0.0.0.0"
    assert (config.device == "cuda") == (target == "server-gpu")
    exposed = {int(p) for stage in chain(stages, target) for kw, rest in stage.instructions if kw == "EXPOSE"
               for p in rest.split()}
    assert {config.port, config.metrics_port} <= exposed
    for name in reachable(stages, target):
        for keyword, rest in stages[name].instructions:
            assert not TORCH_INSTALLS.search(rest), f"{target} gets torch or a torch extra: {name}: {keyword} {rest}"
    copies = [rest.split()[-2:] for stage in chain(stages, target) for kw, rest in stage.instructions if kw == "COPY"]
    assert ["models", "models"] in copies, "the committed default model is copied in"
    assert json.loads(last(stages, target, "HEALTHCHECK").split(" CMD ", 1)[1])[0] == "rosetta-healthcheck"


def test_no_image_keeps_pip_caches():
    _, stages = dockerfile()
    for stage in stages.values():
        for keyword, rest in stage.instructions:
            for pip in re.findall(r"pip (?:install|wheel)\b[^&;]*", rest):
                assert "--no-cache-dir" in pip, f"{stage.name}: {pip}"


def test_gpu_image_has_the_cuda_and_cudnn_that_onnxruntime_gpu_was_built_for():
    from onnxruntime.capi import build_and_package_info

    cuda_major = build_and_package_info.cuda_version.split(".")[0]
    assert any(re.match(rf"nvidia-cudnn-cu{cuda_major}~=9\b", r) for r in metadata.requires("onnxruntime-gpu"))
    _, stages = dockerfile()
    base = chain(stages, "server-gpu")[0].base
    assert re.fullmatch(rf"nvidia/cuda:{cuda_major}\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base


def test_train_image_installs_the_pinned_torch_and_the_export_extra():
    args, stages = dockerfile()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"torch=={args['TORCH_VERSION']}" in extras["train"]
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(rest for stage in chain(stages, "train") for kw, rest in stage.instructions if kw == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs and "[export]" in runs
    assert image_uid("train") == image_uid("server"), "one uid, so shared volumes stay writable"
    run_program(image_command("train"), {})


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", "data/en-es", "bench/.cache", ".carry", ".git", "**/__pycache__", ".pytest_cache"} <= ignored


# ---- docker-compose.yml ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def service_command(service: dict[str, Any]) -> list[str]:
    """The argv a service runs: its command, or its image target's CMD."""
    command = service.get("command") or image_command(service["build"]["target"])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def mounts(service: dict[str, Any]) -> dict[PurePosixPath, str]:
    """Container path -> volume name, or bind source (starting with . or /), from short syntax."""
    found = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        found[PurePosixPath(target)] = source
    return found


def volume_at(service: dict[str, Any], path: str) -> tuple[str, PurePosixPath]:
    """The mount that holds `path` (relative to the service's working directory) and the path inside it."""
    absolute = image_workdir(service["build"]["target"]) / path
    for target, source in mounts(service).items():
        if absolute == target or target in absolute.parents:
            return source, absolute.relative_to(target)
    pytest.fail(f"{absolute} is on no volume of the service: it would be lost with the container")


def seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unexpected duration {duration!r}"
    return 60 * int(parts.group(1) or 0) + int(parts.group(2) or 0)


def server_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s and service_command(s)[0] == "rosetta-serve"}


def test_compose_file_follows_the_compose_specification(compose):
    schema = compose_schema()
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_profiles(compose):
    profiles = {name: s.get("profiles", []) for name, s in compose["services"].items()}
    assert profiles == {"server": [], "server-gpu": ["gpu"], "replica": ["scale"], "nginx": ["scale"],
                        "train": ["train"], "export": ["train"]}


def test_every_compose_service_runs_a_project_program_with_flags_it_accepts(compose):
    built = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(compose["services"]) - set(built) == {"nginx"}
    for name, service in built.items():
        assert "entrypoint" not in service, name
        argv = service_command(service)
        environment = service.get("environment", {})
        if argv[0] == "rosetta-serve":
            assert_server_environment(argv, environment)
        else:
            assert not environment, f"{name}: only the server reads ROSETTA_* variables"
            run_program(argv, environment)


def test_compose_servers_are_healthchecked_limited_and_drained(compose):
    servers = server_services(compose)
    assert set(servers) == {"server", "server-gpu", "replica"}
    for name, service in servers.items():
        config = assert_server_environment(service_command(service), service["environment"])
        probe = service["healthcheck"]["test"]
        assert probe[0] == "CMD", f"{name}: exec form, no shell in the way"
        probe_args = run_program(probe[1:], service["environment"])
        host, port = probe_args.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) == config.port, name
        assert service["restart"] == "unless-stopped"
        assert seconds(service["stop_grace_period"]) > config.grace_seconds, f"{name}: SIGKILL before the drain ends"
        limits = service["deploy"]["resources"]["limits"]
        # Each decoding thread gets a cpu; on a GPU the one engine's thread gets one and the
        # service's event loop (tokenizing, the text path) another.
        threads = config.streams * config.threads + (config.device == "cuda")
        assert limits["memory"] and float(limits["cpus"]) == threads, name
        assert volume_at(service, str(config.repository)) == ("models", PurePosixPath(".")), name
    for name in ("server", "server-gpu"):
        config = assert_server_environment(service_command(servers[name]), servers[name]["environment"])
        assert {f"{config.port}:{config.port}", f"{config.metrics_port}:{config.metrics_port}"} == set(servers[name]["ports"])


def test_gpu_server_reserves_an_nvidia_gpu_and_requires_cuda(compose):
    service = compose["services"]["server-gpu"]
    assert service["build"]["target"] == "server-gpu"
    config = assert_server_environment(service_command(service), service["environment"])
    assert config.device == "cuda" and service["environment"]["ROSETTA_DEVICE"] == "cuda"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["driver"], d["capabilities"], d["count"]) for d in devices] == [("nvidia", ["gpu"], 1)]


def test_train_then_export_lands_in_the_repository_the_servers_watch(compose):
    train, export = compose["services"]["train"], compose["services"]["export"]
    train_args = run_program(service_command(train), {})
    export_args = run_program(service_command(export), {})
    # train reads the bind-mounted corpus and writes its run into the runs volume...
    for path in (train_args.train, train_args.valid):
        assert volume_at(train, str(path))[0] == "./data"
    run_volume, run_dir = volume_at(train, str(train_args.out))
    assert run_volume == "runs"
    # ...from which export takes the run's best checkpoint...
    assert volume_at(export, str(export_args.checkpoint)) == ("runs", run_dir / "best")
    assert volume_at(export, str(export_args.test))[0] == "./data"
    # ...and publishes it as the next version in the volume every server reads, under the served name.
    assert volume_at(export, str(export_args.repository)) == ("models", PurePosixPath("."))
    for name, service in server_services(compose).items():
        config = assert_server_environment(service_command(service), service["environment"])
        assert volume_at(service, str(config.repository)) == ("models", PurePosixPath(".")), name
        assert config.default_model == export_args.name and config.reload_interval > 0, name
    # Fine-tuning starts from the default model's newest committed version, which the train image carries.
    committed = ROOT / train_args.init_from
    assert int(committed.name) == versions(committed.parent)[-1] and committed.parent.name == export_args.name
    assert load_manifest(committed).weights, "a version training can start from: its graphs share a weights file"
    assert train_args.init_from.parts[0] in {rest.split()[-1] for stage in chain(dockerfile()[1], "train")
                                             for kw, rest in stage.instructions if kw == "COPY"}
    assert set(compose["volumes"]) == {"models", "runs"}


def test_scale_profile_puts_replicas_behind_nginx_grpc(compose):
    replica, nginx = compose["services"]["replica"], compose["services"]["nginx"]
    assert replica["deploy"]["replicas"] >= 2 and "ports" not in replica
    config = assert_server_environment(service_command(replica), replica["environment"])
    assert config.port == 50051, "nginx.conf's upstream rosetta_replicas is replica:50051"
    assert nginx["image"] == "nginx:stable" and nginx["ports"] == ["50052:50051"]
    assert mounts(nginx) == {PurePosixPath("/etc/nginx/nginx.conf"): "./deploy/nginx/nginx.conf"}
    assert nginx["depends_on"] == {"replica": {"condition": "service_healthy"}}
    assert nginx["restart"] == "unless-stopped"


def test_every_bind_mount_source_exists(compose):
    for name, service in compose["services"].items():
        for source in mounts(service).values():
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} is missing"


# ---- deploy/k8s --------------------------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in deploy/k8s by (kind, name)."""
    docs = {}
    for path in sorted(set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"}):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"], doc["metadata"]["name"]] = doc | {"_file": path.name}
    return docs


def deployments(k8s) -> dict[str, dict[str, Any]]:
    return {name: doc for (kind, name), doc in k8s.items() if kind == "Deployment"}


# 1.30: the oldest with grpc probes and the preStop sleep action on by default.
@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.utils.latest_version()])
def test_k8s_manifests_match_the_kubernetes_schemas(k8s, version):
    assert {kind for kind, _ in k8s} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}
    for doc in k8s.values():
        manifest = {k: v for k, v in doc.items() if k != "_file"}
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['_file']}: {'/'.join(map(str, e.path))}: {e.message}")


def test_kustomization_applies_everything_but_the_gpu_variant(k8s):
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert set(listed) == {doc["_file"] for doc in k8s.values()} - {"deployment-gpu.yaml"}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    return server


@pytest.mark.parametrize("name, target", [("rosetta-server", "server"), ("rosetta-server-gpu", "server-gpu")])
def test_k8s_servers_probe_the_grpc_port_and_drain_before_they_are_killed(k8s, name, target):
    deployment = deployments(k8s)[name]
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment)
    assert server["image"].split(":")[0] == f"rosetta-mt/{target}"
    environ = {e["name"]: e["value"] for e in server["env"]}
    config = assert_server_environment(server["command"] + server["args"], environ)
    assert config.host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == config.port, f"{name}: {probe}"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    drain = server["lifecycle"]["preStop"]["sleep"]["seconds"] + config.grace_seconds
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid(target), "the uid that owns the image's files"
    for c in pod["containers"] + pod["initContainers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    resources_ = server["resources"]
    assert {"cpu", "memory"} <= set(resources_["requests"]) and {"cpu", "memory"} <= set(resources_["limits"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    [models] = [m for m in server["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.repository]
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] in {n for (k, n) in k8s if k == "PersistentVolumeClaim"}
    assert models["readOnly"] is True, "servers only read the repository"


def test_k8s_cpu_server_threads_fit_its_cpu_limit_and_the_hpa_scales_it(k8s):
    deployment = deployments(k8s)["rosetta-server"]
    server = container(deployment)
    config = assert_server_environment(server["command"] + server["args"], {e["name"]: e["value"] for e in server["env"]})
    assert config.device == "cpu"
    assert float(server["resources"]["limits"]["cpu"]) == config.streams * config.threads
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = k8s["HorizontalPodAutoscaler", "rosetta-server"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rosetta-server"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    # Several pods, on any node, read one repository.
    assert k8s["PersistentVolumeClaim", "rosetta-models"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_gpu_server_takes_one_gpu_and_requires_cuda(k8s):
    server = container(deployments(k8s)["rosetta-server-gpu"])
    config = assert_server_environment(server["command"] + server["args"], {e["name"]: e["value"] for e in server["env"]})
    assert config.device == "cuda"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_k8s_service_reaches_every_server_pod_on_its_grpc_and_metrics_ports(k8s):
    service = k8s["Service", "rosetta-server"]
    selector = service["spec"]["selector"]
    for name, deployment in deployments(k8s).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        container_ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        assert {p["targetPort"]: p["port"] for p in service["spec"]["ports"]} == container_ports, name
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in deployments(k8s).values()]
    assert len(set(selectors)) == len(selectors), "Deployments must not select each other's pods"


# ---- the train profile's routine, run for real on a tiny model --------------------------------

def with_values(argv: list[str], values: dict[str, str]) -> list[str]:
    """argv with the value after each flag in `values` replaced."""
    argv = list(argv)
    for flag, value in values.items():
        argv[argv.index(flag) + 1] = value
    return argv


def run_service(argv: list[str], cwd: Path) -> None:
    """A service's command, as its console script, in a directory laid out like the image's /app."""
    module, function = SCRIPTS[argv[0]].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, *argv[1:]], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{argv}\n{result.stderr[-3000:]}"


@pytest.mark.slow  # trains, exports and runs a real server
def test_train_then_export_commands_reach_the_running_server(compose, tiny_version, tmp_path):
    """`train` then `export`, with the compose file's own commands, end with the `server`
    service's command serving the new version. Changed, and only these: the tiny model stands in
    for the committed one, the server listens on free loopback ports and looks for new versions
    every second, and training runs 3 steps (validating on 8 sentences)."""
    services = compose["services"]
    train, export, server = (service_command(services[name]) for name in ("train", "export", "server"))
    app = tmp_path / "app"
    for split in ("train", "valid", "test"):
        path = app / run_program(train, {}).train.parent / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tsv(path, tiny_pairs())
    # The version the image carries (models/en-es/N): the tiny model's, published under that number.
    carried = app / run_program(train, {}).init_from
    shutil.copytree(tiny_version, carried)

    environment = {**services["server"]["environment"], "ROSETTA_PORT": "0", "ROSETTA_METRICS_PORT": "0",
                   "ROSETTA_RELOAD_INTERVAL": "1"}
    environment["ROSETTA_REPOSITORY"] = str(app / PurePosixPath(environment["ROSETTA_REPOSITORY"]).relative_to(
        image_workdir("server")))
    argv = with_values(server, {"--host": "127.0.0.1"})
    process = subprocess.Popen([sys.executable, "-m", "server.main", *argv[1:]], cwd=ROOT, stdout=subprocess.PIPE,
                               env={**os.environ, **environment}, text=True)
    try:
        port = json.loads(process.stdout.readline())["port"]
        run_service(with_values(train, {"--max-steps": "3", "--eval-every": "3", "--valid-bleu-sentences": "8"}), app)
        run_service(export, app)
        with TranslatorClient(f"127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while not any(m.version == int(carried.name) + 1 and m.state == "SERVING" for m in client.models()):
                assert time.monotonic() < deadline, [(m.version, m.state) for m in client.models()]
                time.sleep(0.5)
            source, target = tiny_pairs()[0]
            assert client.translate(source) == target
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
