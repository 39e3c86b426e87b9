"""Prometheus metrics of the server, served over HTTP on their own port (`--metrics-port`).

rosetta_requests_total{method, code}         calls by RPC and gRPC status code
rosetta_request_seconds{method}              call latency
rosetta_decode_sentences                     sentences per translated request (its texts' sentences)
rosetta_decode_seconds                       decoding time per request, from admission to its last sentence
rosetta_queue_sentences                      sentences waiting to join the rows in flight
rosetta_generated_tokens_total               tokens generated (best hypotheses)
rosetta_abandoned_sentences_total            sentences dropped mid-decode: their call was cancelled or expired
rosetta_model_loaded{model, version, precision, provider}   1 for every version being served
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from server.admission import RequestStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics, in their own registry (tests can run several servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rosetta_requests", "Calls by RPC method and gRPC status code", ["method", "code"],
                                registry=self.registry)
        self.latency = Histogram("rosetta_request_seconds", "Call latency", ["method"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.decode_sentences = Histogram("rosetta_decode_sentences", "Sentences per translated request",
                                          buckets=BATCH_BUCKETS, registry=self.registry)
        self.decode_seconds = Histogram("rosetta_decode_seconds", "Decoding time per request",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("rosetta_queue_sentences", "Sentences waiting to join the rows in flight",
                           registry=self.registry)
        self.generated_tokens = Counter("rosetta_generated_tokens", "Tokens generated (best hypotheses)",
                                        registry=self.registry)
        self.abandoned_sentences = Counter("rosetta_abandoned_sentences",
                                           "Sentences dropped mid-decode because their call was cancelled or expired",
                                           registry=self.registry)
        self.model_loaded = Gauge("rosetta_model_loaded", "1 for every model version being served",
                                  ["model", "version", "precision", "provider"], registry=self.registry)

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def observe_request(self, stats: RequestStats) -> None:
        self.decode_sentences.observe(stats.sentences)
        self.decode_seconds.observe(stats.seconds)
        self.generated_tokens.inc(stats.generated_tokens)
        self.abandoned_sentences.inc(stats.abandoned_sentences)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue.set_function(depth)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (/metrics) in a background thread; returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]
