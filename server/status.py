"""The one place where exceptions become gRPC status codes with rich details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from archadapt.errors import AdaptationCancelled, ArchadaptError, DatasetError
from server.request_decoding import InvalidRequest


def status_for(error: BaseException) -> grpc.Status:
    """Map an exception to a grpc.Status; unknown errors become INTERNAL without internals."""
    if isinstance(error, InvalidRequest):
        return _bad_request(str(error), error.violations)
    if isinstance(error, DatasetError):
        return _bad_request(str(error), [(error.field, f"{error.value}; {error.allowed}")])
    if isinstance(error, AdaptationCancelled):
        return rpc_status.to_status(status_pb2.Status(code=code_pb2.CANCELLED, message=str(error)))
    if isinstance(error, ArchadaptError):
        return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=f"adaptation failed: {error}"))
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; the server log has the details")
    )


def _bad_request(message: str, violations: list[tuple[str, str]]) -> grpc.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[packed]))
