"""Transport security and bearer-token authentication of the gRPC server.

TLS uses a certificate chain and private key in PEM files. Mutual TLS adds a CA bundle and then
requires every client to present a certificate signed by it. Bearer tokens come from a file with
one token per line; a call must carry the metadata ``authorization: Bearer <token>`` with one of
them. The gRPC health service stays open without a token so that load balancers and Kubernetes
probes can reach it. Tokens are compared with ``hmac.compare_digest`` and never logged.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

logger = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "bearer "
# Methods callable without a token: the standard gRPC health service.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
# Rejected calls are logged one by one up to this count, then once per this many.
_REJECTION_LOG_EVERY = 100


class SecurityConfigError(ValueError):
    """A TLS or token option names a missing, unreadable or invalid file, or options do not fit together."""


@dataclass(frozen=True)
class ServerSecurity:
    """Port credentials and call interceptors of the server.

    ``credentials`` None binds a plaintext port.
    """

    credentials: grpc.ServerCredentials | None = None
    interceptors: tuple[grpc.ServerInterceptor, ...] = field(default_factory=tuple)

    def add_port(self, server: grpc.Server, address: str) -> int:
        """Bind ``address`` on ``server`` with these credentials and return the bound port (0 on failure)."""
        if self.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.credentials)


def _read_pem(path: Path, description: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SecurityConfigError(f"cannot read the {description} {path}: {error}") from error
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"the {description} {path} is not a PEM file; expected a '-----BEGIN ...' block")
    return data


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """Build TLS server credentials from PEM files.

    ``cert`` contains the server's certificate chain and ``key`` its private key. With ``client_ca``,
    the server requires and verifies a client certificate signed by that CA (mutual TLS).
    """
    chain = _read_pem(cert, "TLS certificate")
    private_key = _read_pem(key, "TLS private key")
    root = _read_pem(client_ca, "client CA bundle") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=root, require_client_auth=root is not None
    )


def read_tokens(path: Path) -> list[bytes]:
    """Read bearer tokens, one per line; blank lines and lines starting with '#' are skipped.

    Raises SecurityConfigError when the file cannot be read, contains no token, or a token contains
    whitespace (it could not travel in an ``authorization`` header).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SecurityConfigError(f"cannot read the token file {path}: {error}") from error
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(character.isspace() for character in token):
            # The message names the line, never the token.
            raise SecurityConfigError(f"line {number} of the token file {path} contains whitespace; write one token per line")
        tokens.append(token.encode("utf-8"))
    if not tokens:
        raise SecurityConfigError(f"the token file {path} contains no token; write one token per line")
    return tokens


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Reject calls without a valid ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    Methods in ``open_methods`` pass without a token. The presented token is compared with every
    accepted token by ``hmac.compare_digest``, so the time taken does not reveal how much of a
    token matched.
    """

    def __init__(self, tokens: Iterable[bytes], open_methods: Iterable[str] = OPEN_METHODS) -> None:
        self._tokens = tuple(tokens)
        if not self._tokens:
            raise SecurityConfigError("BearerTokenInterceptor needs at least one token")
        self._open_methods = frozenset(open_methods)
        self._rejections = 0
        self._lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method in self._open_methods:
            return continuation(handler_call_details)
        problem = self._check(handler_call_details.invocation_metadata or ())
        handler = continuation(handler_call_details)
        if problem is None or handler is None:
            return handler
        return _rejecting_handler(handler, method, problem, self._count_rejection)

    def _check(self, metadata: Sequence[Any]) -> str | None:
        """Return why the call is rejected, or None when it carries an accepted token."""
        values = [value for key, value in metadata if key == AUTHORIZATION_KEY]
        if not values:
            return "missing authorization metadata; send 'authorization: Bearer <token>'"
        if len(values) > 1:
            return "more than one authorization metadata entry; send exactly one"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not value.lower().startswith(BEARER_PREFIX):
            return "the authorization metadata is not a bearer token; send 'authorization: Bearer <token>'"
        presented = value[len(BEARER_PREFIX) :].strip().encode("utf-8")
        # Compare with every token, without stopping early, so the time does not tell which matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return None if matched else "invalid bearer token"

    def _count_rejection(self) -> int:
        with self._lock:
            self._rejections += 1
            return self._rejections


def _rejecting_handler(
    handler: grpc.RpcMethodHandler, method: str, problem: str, count_rejection: Callable[[], int]
) -> grpc.RpcMethodHandler:
    """Return a handler of the same RPC type as ``handler`` that aborts with UNAUTHENTICATED."""

    def abort(context: grpc.ServicerContext) -> None:
        count = count_rejection()
        if count <= _REJECTION_LOG_EVERY or count % _REJECTION_LOG_EVERY == 0:
            logger.warning("rejected call %d to %s from %s: %s", count, method, context.peer(), problem)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

    def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
        abort(context)

    def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
        abort(context)
        yield  # makes this a generator, as a server-streaming handler must be

    def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
        abort(context)

    def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
        abort(context)
        yield

    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
    return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --tls-cert, --tls-key, --tls-client-ca and --token-file to the server's parser."""
    group = parser.add_argument_group("security (default: plaintext without authentication)")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA bundle (mutual TLS; needs --tls-cert)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="require 'authorization: Bearer <token>' metadata with a token from this file, one per line; "
        "the gRPC health service stays open",
    )


def security_from_args(args: argparse.Namespace) -> ServerSecurity:
    """Build the ServerSecurity that the parsed options select; raise SecurityConfigError on invalid options."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SecurityConfigError("--tls-cert and --tls-key must be given together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key, since mutual TLS runs over TLS")
    credentials = None
    if args.tls_cert is not None:
        credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    interceptors: tuple[grpc.ServerInterceptor, ...] = ()
    if args.token_file is not None:
        interceptors = (BearerTokenInterceptor(read_tokens(args.token_file)),)
    return ServerSecurity(credentials=credentials, interceptors=interceptors)


def describe(security: ServerSecurity, args: argparse.Namespace) -> str:
    """Describe the transport and authentication for the start-up log, without any secret."""
    if security.credentials is None:
        transport = "plaintext"
    elif args.tls_client_ca is not None:
        transport = "mutual TLS"
    else:
        transport = "TLS"
    authentication = "bearer token" if security.interceptors else "no authentication"
    return f"{transport}, {authentication}"
