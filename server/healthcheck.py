"""`rosetta-healthcheck`: exit 0 only when the server's gRPC health service answers SERVING.

    rosetta-healthcheck --address 127.0.0.1:50051 --service "" --timeout 3

Containers need a health command that runs inside the image: the server image has no torch,
no curl and no grpc_health_probe, but it has grpcio and grpcio-health-checking, so this asks
the standard grpc.health.v1 service that `rosetta-serve` runs (NOT_SERVING while models load
and while draining on SIGTERM). Exit 1 on anything else, unreachable included, as Docker's
HEALTHCHECK expects. It speaks plain text: a server started with TLS needs another probe.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def build_parser() -> argparse.ArgumentParser:
    # The default port follows ROSETTA_PORT, so in the server's own container the bare command is right.
    port = os.environ.get("ROSETTA_PORT", "50051")
    p = argparse.ArgumentParser(prog="rosetta-healthcheck",
                                description="Exit 0 if the gRPC health service says SERVING, else 1.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--address", default=f"127.0.0.1:{port}", help="host:port of the server")
    p.add_argument("--service", default="", help="service to ask about; empty: the whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return p


def check(address: str, service: str, timeout: float) -> str:
    """The health status name, e.g. SERVING, or the gRPC error code name when there is no answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = check(args.address, args.service, args.timeout)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
