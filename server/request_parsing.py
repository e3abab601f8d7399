"""Registration of the Adaptation service with request parsing that reports bad bytes as such.

gRPC Python rejects a request whose bytes fail to parse with INTERNAL ("Exception deserializing
request!") before any handler runs, which reports a server fault for a client error. Here each
parse failure becomes an UnparsableRequest that the handler rejects with INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


class UnparsableRequest:
    """A request message whose bytes failed to parse."""

    def __init__(self, size: int, error: DecodeError):
        self.size = size
        self.error = error

    def describe(self) -> str:
        return f"the {self.size} request bytes are not a valid message of the method's request type: {self.error}"


def _parse_or_mark(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def parse_request(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as error:
            return UnparsableRequest(len(data), error)

    return parse_request


class _HandlerCapture:
    """Stands in for a grpc.Server to collect the method handlers that the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = method_handlers


def add_adaptation_servicer(servicer: pb_grpc.AdaptationServicer, server: grpc.Server, service_name: str) -> None:
    """Register `servicer` like the generated add_AdaptationServicer_to_server, with marked parse failures."""
    capture = _HandlerCapture()
    pb_grpc.add_AdaptationServicer_to_server(servicer, capture)
    if not capture.handlers:
        raise RuntimeError("the generated stubs registered no method handlers; regenerate them with scripts/generate_protos.py")
    handlers = {
        name: handler._replace(request_deserializer=_parse_or_mark(handler.request_deserializer))
        for name, handler in capture.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)
