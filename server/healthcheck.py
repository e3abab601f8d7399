"""Ask a server for its gRPC health status: ``python -m server.healthcheck --port 50051``.

The container's HEALTHCHECK runs this module. It exits 0 only when the server returns SERVING,
and 1 on any other status, a failed call or a timeout. It imports neither torch nor the service,
so it starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.healthcheck",
        description="Call grpc.health.v1.Health/Check and exit 0 only when the status is SERVING.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="server port (default: 50051)")
    parser.add_argument(
        "--service", default="", help="service name to check; the empty default is the whole server's status"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline of the call in seconds (default: 5)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="connect with TLS and verify the server with this CA bundle")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate for a server that requires mutual TLS")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    return parser.parse_args(argv)


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    target = f"{args.host}:{args.port}"
    if args.tls_ca is None and args.tls_cert is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(target, credentials)


def check(args: argparse.Namespace) -> tuple[int, str]:
    """Return the exit status and a line that describes the outcome."""
    with open_channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as error:
            return EXIT_NOT_SERVING, f"health check of {args.host}:{args.port} failed: {error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    exit_status = EXIT_SERVING if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_NOT_SERVING
    return exit_status, status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        exit_status, line = check(args)
    except OSError as error:
        exit_status, line = EXIT_NOT_SERVING, f"cannot read a TLS file: {error}"
    print(line, file=sys.stdout if exit_status == EXIT_SERVING else sys.stderr)
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
