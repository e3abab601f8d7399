"""The exception raised for failed archadapt calls."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


class ArchadaptError(Exception):
    """A failed archadapt call: the gRPC status the server sent or the client detected.

    Attributes:
        code: The gRPC status code, e.g. ``grpc.StatusCode.INVALID_ARGUMENT``.
        code_name: The code's name, e.g. ``"INVALID_ARGUMENT"``.
        message: The status details of the server, or the client's own message.
        field_violations: ``(field, description)`` pairs of the
            ``google.rpc.BadRequest`` detail, empty when the status has none.
        retry_delay: Seconds to wait before retrying, from the
            ``google.rpc.RetryInfo`` detail (sent with RESOURCE_EXHAUSTED),
            or None when the status has none.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.retry_delay = retry_delay

    @property
    def code_name(self) -> str:
        return str(self.code.name)

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ArchadaptError:
        """Convert a ``grpc.RpcError`` raised by a stub call.

        Field violations are read from the ``grpc-status-details-bin`` trailer
        with ``grpc_status.rpc_status.from_call``. A trailer that does not
        match the call's code and details is logged and ignored.
        """
        code_method = getattr(error, "code", None)
        details_method = getattr(error, "details", None)
        code = code_method() if callable(code_method) else None
        message = details_method() if callable(details_method) else None
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        if not message:
            message = str(error) or "no details from the server"
        status = _status_details(error)
        return cls(code, message, _bad_request_violations(status), _retry_delay(status))


def _status_details(error: grpc.RpcError) -> status_pb2.Status | None:
    if not isinstance(error, grpc.Call):
        return None
    try:
        return rpc_status.from_call(error)
    except ValueError as mismatch:
        logger.warning("ignoring the status details of a failed call: %s", mismatch)
        return None


def _retry_delay(status: status_pb2.Status | None) -> float | None:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            return retry_info.retry_delay.ToTimedelta().total_seconds()
    return None


def _bad_request_violations(status: status_pb2.Status | None) -> list[tuple[str, str]]:
    if status is None:
        return []

    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if not detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            continue
        bad_request = error_details_pb2.BadRequest()
        detail.Unpack(bad_request)
        violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def translate_rpc_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate ``function`` so that a ``grpc.RpcError`` it raises becomes an ArchadaptError.

    The original error is kept as ``__cause__``.
    """

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except grpc.RpcError as error:
            raise ArchadaptError.from_rpc_error(error) from error

    return wrapper
