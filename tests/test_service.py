"""The gRPC service, tested as clients see it: a real `rosetta-serve` process on a loopback port."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rosetta.v1 import translator_pb2 as pb
from rosetta.v1 import translator_pb2_grpc
from tests.builders import tiny_pairs
from tests.conftest import ROOT, Server, wait_for
from tests.versions import publish

pytestmark = pytest.mark.slow  # real server processes (pytest -m "not slow" skips them)

PAIRS = tiny_pairs()
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def server(service_repository):
    s = Server(service_repository)
    yield s
    assert s.stop() == 0


def error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_translate_returns_the_translation_model_and_version(server):
    source, target = PAIRS[0]
    response = server.stub.Translate(pb.TranslateRequest(text=source), timeout=30)
    assert response.translation == target
    assert (response.model, response.version) == ("tiny", 1)
    assert response.hypotheses[0].text == target and response.hypotheses[0].score <= 0
    assert response.sentences == 1 and response.source_tokens > 1


def test_several_sentences_are_split_and_joined_with_their_spacing(server):
    (s1, t1), (s2, t2), (s3, t3) = PAIRS[:3]
    text = f"  {s1}  {s2}\n{s3} "
    response = server.stub.Translate(pb.TranslateRequest(text=text, options=pb.DecodingOptions(beam_size=1)),
                                     timeout=30)
    assert response.translation == f"  {t1}  {t2}\n{t3} "
    assert response.sentences == 3


def test_a_sentence_longer_than_the_model_accepts_is_translated_in_parts_not_refused(server):
    response = server.stub.Translate(pb.TranslateRequest(text=" ".join(["house"] * 200)), timeout=60)
    assert response.sentences == 1 and response.translation.strip()
    assert "longer than the model's 64; translated in" in response.report.repairs[0]


def test_markup_placeholders_kept_strings_and_glossary_terms_come_through(server):
    """The tiny model knows no sentinels: the text between the pieces is translated on its own,
    and every piece stands where it stood."""
    response = server.stub.Translate(pb.TranslateRequest(
        text=f'<p>Rosetta <b class="x">%s</b> &amp; now {{name}}.</p>\n<p>{PAIRS[0][0]}</p>', format=pb.TEXT_FORMAT_HTML,
        keep=["Rosetta"], glossary=[pb.GlossaryTerm(source="now", target="YA")]), timeout=30)
    assert response.translation.startswith('<p>Rosetta <b class="x">%s</b> &amp; YA {name}')
    assert response.translation.endswith(f"</p>\n<p>{PAIRS[0][1]}</p>")
    report = response.report
    assert list(report.protected) == ["Rosetta", "%s", "{name}"] and report.tags == 1
    assert [(t.source, t.target) for t in report.glossary_applied] == [("now", "YA")]
    assert len(report.confidence) == response.sentences == 2 and all(0 < c <= 1 for c in report.confidence)


def test_n_best_and_options(server):
    source, target = PAIRS[1]
    response = server.stub.Translate(pb.TranslateRequest(
        text=source, options=pb.DecodingOptions(beam_size=4, n_best=3, length_penalty=0.5)), timeout=30)
    scores = [h.score for h in response.hypotheses]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert response.translation == target
    short = server.stub.Translate(pb.TranslateRequest(text=source, options=pb.DecodingOptions(max_length=2)),
                                  timeout=30)
    assert short.hypotheses[0].tokens <= 2


def test_batch_answers_in_request_order(server):
    texts = [s for s, _ in PAIRS[:8]]
    response = server.stub.TranslateBatch(pb.TranslateBatchRequest(texts=texts), timeout=30)
    assert [r.translation for r in response.translations] == [t for _, t in PAIRS[:8]]


def test_stream_correlates_by_id_and_reports_errors_per_item(server):
    requests = [pb.TranslateStreamRequest(id=f"r{i}", request=pb.TranslateRequest(text=s))
                for i, (s, _) in enumerate(PAIRS[:5])]
    requests.append(pb.TranslateStreamRequest(id="bad", request=pb.TranslateRequest(text="   ")))
    responses = {r.id: r for r in server.stub.TranslateStream(iter(requests), timeout=30)}
    assert set(responses) == {"r0", "r1", "r2", "r3", "r4", "bad"}
    for i, (_, target) in enumerate(PAIRS[:5]):
        assert responses[f"r{i}"].response.translation == target
    assert responses["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "empty" in responses["bad"].error.message


def test_concurrent_requests_get_the_answers_they_get_alone(server):
    texts = [s for s, _ in PAIRS] + [f"{a} {b}" for (a, _), (b, _) in zip(PAIRS[::2], PAIRS[1::2])]
    alone = [server.stub.Translate(pb.TranslateRequest(text=t), timeout=30).translation for t in texts]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: server.stub.Translate(pb.TranslateRequest(text=t), timeout=30).translation,
                                 texts))
    assert together == alone


def test_list_models_describes_what_is_served(server):
    (model,) = server.stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert (model.name, model.version, model.precision, model.state) == ("tiny", 1, "fp32", "SERVING")
    assert (model.source_lang, model.target_lang) == ("en", "es")
    assert model.execution_provider == "CPUExecutionProvider"
    assert model.default_model and model.default_version and model.loaded_at
    assert model.parity_summary.startswith("passed")


@pytest.mark.parametrize("request_, code, words", [
    (pb.TranslateRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (pb.TranslateRequest(text="The cat.", model="xx-yy"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    (pb.TranslateRequest(text="The cat.", version=7), grpc.StatusCode.NOT_FOUND, "no version 7"),
    (pb.TranslateRequest(text="The cat.", options=pb.DecodingOptions(beam_size=99)),
     grpc.StatusCode.INVALID_ARGUMENT, "beam_size"),
    (pb.TranslateRequest(text="The cat.", options=pb.DecodingOptions(beam_size=2, n_best=3)),
     grpc.StatusCode.INVALID_ARGUMENT, "n_best"),
    (pb.TranslateRequest(text="x" * 10_001), grpc.StatusCode.INVALID_ARGUMENT, "limit is 10000"),
    (pb.TranslateRequest(text="The cat.", format=9), grpc.StatusCode.INVALID_ARGUMENT, "format 9 is unknown"),
    (pb.TranslateRequest(text="The cat.", glossary=[pb.GlossaryTerm(source="cat", target="")]),
     grpc.StatusCode.INVALID_ARGUMENT, "glossary[0].target has 0 characters"),
    (pb.TranslateRequest(text="The cat.", keep=["k"] * 257), grpc.StatusCode.INVALID_ARGUMENT, "limit is 256"),
])
def test_bad_requests_get_a_clear_status(server, request_, code, words):
    error = error_of(server.stub.Translate, request_, timeout=10)
    assert error.code() == code
    assert words in error.details()


def test_batch_limits_name_the_bad_text(server):
    error = error_of(server.stub.TranslateBatch, pb.TranslateBatchRequest(texts=["The cat.", ""]), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "text 1" in error.details()
    error = error_of(server.stub.TranslateBatch, pb.TranslateBatchRequest(texts=["a"] * 257), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit per call is 256" in error.details()


def test_health_and_reflection(server):
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "rosetta.v1.Translator"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    (answer,) = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=5)
    services = {s.name for s in answer.list_services_response.service}
    assert {"rosetta.v1.Translator", "grpc.health.v1.Health"} <= services


def test_sigterm_finishes_in_flight_calls_then_exits_zero(service_repository):
    s = Server(service_repository)
    texts = [source for source, _ in PAIRS] * 8
    long_work = pb.TranslateBatchRequest(texts=texts, options=pb.DecodingOptions(beam_size=8, min_length=50))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(s.stub.TranslateBatch, long_work, timeout=120)
        time.sleep(0.5)
        assert not call.done(), "the call should still be running when SIGTERM arrives"
        s.process.send_signal(signal.SIGTERM)
        assert len(call.result().translations) == len(texts)
    assert s.process.wait(timeout=30) == 0
    s.channel.close()


def test_health_watch_follows_loading_serving_and_shutdown_and_logs_are_json(service_repository, tmp_path):
    """Health says NOT_SERVING while the models load (calls get UNAVAILABLE), SERVING once they are
    ready, NOT_SERVING again on SIGTERM; a Watch stream sees each change. Every log line is JSON."""
    repository = tmp_path / "models"
    for n in range(6):  # several models, so loading takes long enough to be observed
        shutil.copytree(service_repository / "tiny", repository / f"tiny-{n}")
    process = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--repository", str(repository), "--port", "0", "--device", "cpu",
         "--threads", "1", "--metrics-port", "-1", "--log-format", "json", "--grace-seconds", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = []
    while not records or records[-1].get("event") != "listening":
        line = process.stderr.readline()
        assert line, f"the server exited before listening: {records}"
        records.append(json.loads(line))
    channel = grpc.insecure_channel(f"localhost:{records[-1]['port']}")
    health = health_pb2_grpc.HealthStub(channel)
    seen: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(service="rosetta.v1.Translator"), timeout=120)
    watcher = threading.Thread(target=lambda: seen.extend(r.status for r in watch), daemon=True)
    watcher.start()
    try:
        loading = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        early = error_of(translator_pb2_grpc.TranslatorStub(channel).Translate, pb.TranslateRequest(text="The cat."),
                         timeout=5)
        assert json.loads(process.stdout.readline())["event"] == "serving"
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
        wait_for(lambda: SERVING in seen)
        process.send_signal(signal.SIGTERM)
        # Well inside the 60 s grace: the open Watch stream ends at shutdown instead of holding it open.
        assert process.wait(timeout=20) == 0
        watcher.join(timeout=10)
        assert not watcher.is_alive()
    finally:
        channel.close()
        process.kill()
    assert loading == NOT_SERVING
    assert early.code() == grpc.StatusCode.UNAVAILABLE and "loading" in early.details()
    assert [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s] == [NOT_SERVING, SERVING, NOT_SERVING]
    records += [json.loads(line) for line in process.stderr.read().splitlines()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    events = [r.get("event") for r in records]
    for event in ("starting", "listening", "accepted", "promoted", "serving", "shutting_down", "stopped"):
        assert event in events, (event, events)
    assert records[0]["config"]["repository"] == str(repository)


def test_an_empty_repository_fails_start_up_with_a_clear_message(tmp_path):
    process = subprocess.run([sys.executable, "-m", "server.main", "--repository", str(tmp_path), "--port", "0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert process.returncode == 1
    assert "no servable model version" in process.stderr


def test_committed_stubs_match_the_proto(tmp_path):
    """The stubs in protos/rosetta/v1 are what grpcio-tools generates from the .proto (run `make protos`)."""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", "protos/rosetta/v1/translator.proto"],
                   cwd=ROOT, check=True)
    for name in ("translator_pb2.py", "translator_pb2_grpc.py", "translator_pb2.pyi"):
        generated = (tmp_path / "rosetta" / "v1" / name).read_text()
        assert generated == (ROOT / "protos" / "rosetta" / "v1" / name).read_text(), name


def test_python_client(server):
    from client import TranslationError, TranslatorClient

    with TranslatorClient(f"127.0.0.1:{server.port}", timeout=30) as client:
        assert client.translate(PAIRS[0][0]) == PAIRS[0][1]
        hypotheses = client.translate_n_best(PAIRS[0][0], beam_size=4, n_best=2)
        assert len(hypotheses) == 2 and hypotheses[0].score >= hypotheses[1].score
        assert client.translate_batch([s for s, _ in PAIRS[:3]], beam_size=1) == [t for _, t in PAIRS[:3]]
        batch = client.translate_batch_n_best([s for s, _ in PAIRS[:3]], beam_size=4, n_best=3)
        assert [len(h) for h in batch] == [3, 3, 3] and [h[0].text for h in batch] == [t for _, t in PAIRS[:3]]
        streamed = {r.index: r for r in client.translate_stream(iter([PAIRS[0][0], "", PAIRS[1][0]]), n_best=2)}
        assert (streamed[0].translation, streamed[2].translation) == (PAIRS[0][1], PAIRS[1][1])
        assert len(streamed[0].hypotheses) == 2
        assert streamed[1].error.code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in streamed[1].error.message
        assert [(m.name, m.version, m.state, m.default_version) for m in client.models()] == [("tiny", 1, "SERVING", True)]
        with pytest.raises(TranslationError) as caught:
            client.translate("The cat.", model="nope")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_translate_cli_argument_stdin_and_errors(server):
    address = f"127.0.0.1:{server.port}"
    cli = [sys.executable, "-m", "client.cli", "--server", address]
    out = subprocess.run([*cli, PAIRS[0][0]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == PAIRS[0][1] + "\n"
    stdin = "".join(s + "\n" for s, _ in PAIRS[:3])
    out = subprocess.run(cli, input=stdin, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == [t for _, t in PAIRS[:3]]
    out = subprocess.run([*cli, "--model", "nope", "The cat."], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "unknown model" in out.stderr
    out = subprocess.run([sys.executable, "-m", "client.cli", "--server", "127.0.0.1:1", "--timeout", "5", "Hi."],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr


def test_metrics_count_calls_by_method_and_code(server):
    server.stub.Translate(pb.TranslateRequest(text=PAIRS[0][0]), timeout=30)
    error_of(server.stub.Translate, pb.TranslateRequest(text=""), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.started['metrics_port']}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert 'rosetta_requests_total{code="OK",method="Translate"}' in text
    assert 'rosetta_requests_total{code="INVALID_ARGUMENT",method="Translate"}' in text
    assert "rosetta_decode_sentences_count" in text and "rosetta_generated_tokens_total" in text
    assert 'rosetta_model_loaded{model="tiny",precision="fp32",provider="CPUExecutionProvider",version="1"} 1.0' in text
    assert "rosetta_queue_sentences 0.0" in text


def test_bearer_token_is_required_except_for_health(service_repository, tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    s = Server(service_repository, "--auth-token-file", str(tmp_path / "token"))
    try:
        assert "s3cret" not in s.process.stderr.readline()  # the printed configuration hides the token
        request = pb.TranslateRequest(text=PAIRS[0][0])
        assert error_of(s.stub.Translate, request, timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = [("authorization", "Bearer nope")]
        assert error_of(s.stub.Translate, request, timeout=10, metadata=wrong).code() == \
            grpc.StatusCode.UNAUTHENTICATED
        right = [("authorization", "Bearer s3cret-token")]
        assert s.stub.Translate(request, timeout=30, metadata=right).translation == PAIRS[0][1]
        stream = s.stub.TranslateStream(iter([pb.TranslateStreamRequest(id="a", request=request)]), timeout=10)
        assert error_of(list, stream).code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(s.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert s.stop() == 0


def test_tls(service_repository, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    s = Server(service_repository, "--tls-cert", str(cert), "--tls-key", str(key),
               credentials=grpc.ssl_channel_credentials(cert.read_bytes()))
    try:
        assert s.started["tls"] is True
        assert s.stub.Translate(pb.TranslateRequest(text=PAIRS[0][0]), timeout=30).translation == PAIRS[0][1]
        plain = translator_pb2_grpc.TranslatorStub(grpc.insecure_channel(f"localhost:{s.port}"))
        assert error_of(plain.Translate, pb.TranslateRequest(text="Hi."), timeout=5).code() == \
            grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0


def states(s: Server) -> dict[int, str]:
    return {m.version: m.state for m in s.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


def test_hot_reload_under_load_and_gates_that_reject(service_repository, tiny_version, worse_version, tmp_path):
    """Clients translate without pause while new versions arrive: a good one is swapped in with
    no failed request; a corrupted one and a worse one are rejected while the good one serves.
    (A version arriving straight from rosetta-export: tests/test_readme.py, tests/test_deployment.py.)"""
    repository = tmp_path / "models"
    shutil.copytree(service_repository, repository)
    s = Server(repository, "--reload-interval", "0.3")
    stop, answers, errors = threading.Event(), [], []

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            source, target = PAIRS[i % len(PAIRS)]
            try:
                response = s.stub.Translate(pb.TranslateRequest(text=source), timeout=30)
                answers.append((response.version, response.translation == target))
            except grpc.RpcError as e:
                errors.append(e)
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        assert publish(repository, "tiny", tiny_version) == 2
        wait_for(lambda: any(v == 2 for v, _ in answers[-8:]))
        served_before = len(answers)
        wait_for(lambda: len(answers) > served_before + 20)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert all(correct for _, correct in answers)
    assert {v for v, _ in answers[-10:]} == {2}

    # A corrupted version: rejected, version 2 keeps serving.
    staged = tmp_path / "staged-3"
    shutil.copytree(repository / "tiny" / "2", staged)
    data = bytearray((staged / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (staged / "decoder.onnx").write_bytes(bytes(data))
    staged.rename(repository / "tiny" / "3")
    s.process.send_signal(signal.SIGHUP)
    wait_for(lambda: states(s).get(3, "").startswith("REJECTED"))
    assert "checksum" in states(s)[3]

    # A worse model (weights perturbed): exports fine, but its held-out chrF falls: rejected.
    assert publish(repository, "tiny", worse_version) == 4
    wait_for(lambda: states(s).get(4, "").startswith("REJECTED"))
    assert "chrF" in states(s)[4]
    assert states(s)[2] == "SERVING"
    assert s.stub.Translate(pb.TranslateRequest(text=PAIRS[0][0]), timeout=30).version == 2

    # The swapped-out version 1 can still be pinned: it is loaded again on demand, off the event loop.
    pinned = [s.stub.Translate.future(pb.TranslateRequest(text=PAIRS[1][0], version=1), timeout=30) for _ in range(3)]
    assert [(p.result().version, p.result().translation) for p in pinned] == [(1, PAIRS[1][1])] * 3
    assert s.stop() == 0


def test_a_full_queue_answers_resource_exhausted_and_says_how_full(service_repository):
    """Room for one beam-16 sentence in flight, many slow ones waiting: a request that does not
    fit in the queue gets RESOURCE_EXHAUSTED (it would fit later), and everything admitted is
    answered."""
    s = Server(service_repository, "--max-queue-sentences", "100", "--max-rows", "16", "--streams", "1")
    try:
        texts = [source for source, _ in PAIRS]
        slow = pb.DecodingOptions(beam_size=16, min_length=60)
        long_work = s.stub.TranslateBatch.future(pb.TranslateBatchRequest(texts=texts * 2, options=slow), timeout=300)
        time.sleep(0.3)
        waiting = s.stub.TranslateBatch.future(pb.TranslateBatchRequest(texts=texts, options=slow), timeout=300)
        time.sleep(0.05)
        error = error_of(s.stub.TranslateBatch, pb.TranslateBatchRequest(texts=texts), timeout=10)
        assert not long_work.done(), "the rows should still be busy"
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        queued = re.search(r"(\d+) of 100 sentences are waiting and the request has 32; retry later", error.details())
        assert queued and int(queued.group(1)) + 32 > 100, error.details()
        assert len(waiting.result().translations) == len(texts)
        assert len(long_work.result().translations) == len(texts) * 2
        assert s.stub.Translate(pb.TranslateRequest(text=PAIRS[0][0]), timeout=30).translation == PAIRS[0][1]
    finally:
        assert s.stop() == 0


def test_expired_requests_get_deadline_exceeded_and_cost_nothing_after(server):
    texts = [source for source, _ in PAIRS] * 8
    long_work = pb.TranslateBatchRequest(texts=texts, options=pb.DecodingOptions(beam_size=8, min_length=50))
    before = metric(server, "rosetta_abandoned_sentences_total")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(server.stub.TranslateBatch, long_work, timeout=120)
        time.sleep(0.2)
        error = error_of(server.stub.TranslateBatch, long_work, timeout=0.5)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(busy.result().translations) == len(texts)
    waited = 0.0  # the expired request's sentences left the engines (or the queue) and were counted
    while metric(server, "rosetta_abandoned_sentences_total") == before and waited < 60:
        time.sleep(0.1)
        waited += 0.1
    assert metric(server, "rosetta_abandoned_sentences_total") > before
    assert server.stub.Translate(pb.TranslateRequest(text=PAIRS[0][0]), timeout=30).translation == PAIRS[0][1]


def metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.started['metrics_port']}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not among the metrics")


def test_health_answers_while_a_long_batch_decodes(server):
    """Decoding runs in worker threads and ONNX Runtime releases the GIL: the event loop stays free.
    (Health latency under load is measured by bench/grpc_speed.py; here a 1 s deadline is the bound.)"""
    texts = [source for source, _ in PAIRS] * 8
    call = server.stub.TranslateBatch.future(
        pb.TranslateBatchRequest(texts=texts, options=pb.DecodingOptions(beam_size=16, min_length=60)), timeout=300)
    health = health_pb2_grpc.HealthStub(server.channel)
    time.sleep(0.5)
    for _ in range(10):
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status == SERVING
    assert not call.done(), "the batch should still be decoding while health answered"
    call.cancel()


def test_a_call_cancelled_mid_batch_stops_costing_compute(server):
    """Cancel a long batch while it decodes: its sentences leave the running batch, the server moves on."""
    texts = [source for source, _ in PAIRS] * 8
    long_work = pb.TranslateBatchRequest(texts=texts, options=pb.DecodingOptions(beam_size=16, min_length=60))
    before = metric(server, "rosetta_abandoned_sentences_total")
    call = server.stub.TranslateBatch.future(long_work, timeout=300)
    time.sleep(1.0)
    assert call.cancel()
    waited = 0.0
    while metric(server, "rosetta_abandoned_sentences_total") == before and waited < 60:
        time.sleep(0.1)
        waited += 0.1
    assert metric(server, "rosetta_abandoned_sentences_total") > before
    assert server.stub.Translate(pb.TranslateRequest(text=PAIRS[0][0]), timeout=30).translation == PAIRS[0][1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), beam=st.integers(-1, 40), n_best=st.integers(0, 40),
       min_length=st.integers(0, 300), max_length=st.integers(0, 300),
       penalty=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_arbitrary_input_gets_an_answer_or_a_clear_refusal(server, text, beam, n_best, min_length, max_length, penalty):
    options = pb.DecodingOptions(beam_size=max(beam, 0), n_best=n_best, min_length=min_length, max_length=max_length)
    if penalty is not None:
        options.length_penalty = penalty
    try:
        response = server.stub.Translate(pb.TranslateRequest(text=text, options=options), timeout=60)
        assert response.hypotheses and response.model == "tiny"
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        assert e.details()
