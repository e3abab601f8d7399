"""The one place where exceptions become gRPC status codes with rich details."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from archadapt.errors import AdaptationCancelled, ArchadaptError, BudgetError, DatasetError
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    ShuttingDown,
    StoredJobFailure,
)
from server.request_decoding import InvalidRequest

_SIMPLE_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (OutOfRange, code_pb2.OUT_OF_RANGE),
    (ShuttingDown, code_pb2.UNAVAILABLE),
    (AdaptationCancelled, code_pb2.CANCELLED),
)


def status_for(error: BaseException) -> grpc.Status:
    """Map an exception to a grpc.Status; unknown errors become INTERNAL without internals."""
    return rpc_status.to_status(status_proto_for(error))


def status_proto_for(error: BaseException) -> status_pb2.Status:
    """Map an exception to a google.rpc.Status message, the form that is stored with failed jobs."""
    if isinstance(error, InvalidRequest):
        return _bad_request(str(error), error.violations)
    if isinstance(error, BudgetError):
        return _bad_request(str(error), [(f"options.{option}", description) for option, description in error.violations])
    if isinstance(error, DatasetError):
        return _bad_request(str(error), [(error.field, f"{error.value}; {error.allowed}")])
    if isinstance(error, ResourceExhausted):
        return _resource_exhausted(str(error), error.retry_after)
    if isinstance(error, StoredJobFailure):
        return status_pb2.Status(code=error.code, message=str(error))
    for error_type, code in _SIMPLE_CODES:
        if isinstance(error, error_type):
            return status_pb2.Status(code=code, message=str(error))
    if isinstance(error, ArchadaptError):
        return status_pb2.Status(code=code_pb2.INTERNAL, message=f"adaptation failed: {error}")
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; the server log has the details")


def _bad_request(message: str, violations: list[tuple[str, str]]) -> status_pb2.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[packed])


def _resource_exhausted(message: str, retry_after: float) -> status_pb2.Status:
    seconds = max(1, math.ceil(retry_after))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
    return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[packed])
