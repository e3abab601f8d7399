"""Exception types of the job service; server/status.py maps each one to a gRPC status code."""

from __future__ import annotations


class JobServiceError(Exception):
    """Base class of the errors that the job service raises on purpose."""


class NotFound(JobServiceError, LookupError):
    """A job or dataset id is unknown, or its job has expired."""


class AlreadyExists(JobServiceError):
    """An idempotency key belongs to a job with another dataset or other options."""


class ResourceExhausted(JobServiceError):
    """The queue or the data directory is full; `retry_after` is the suggested delay in seconds."""

    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)


class FailedPrecondition(JobServiceError):
    """The job is not in a state that allows the call, for example a download before SUCCEEDED."""


class OutOfRange(JobServiceError, ValueError):
    """An offset or event index lies past the end of what exists."""


class ShuttingDown(JobServiceError):
    """The server is stopping and accepts no new work."""


class StoredJobFailure(JobServiceError):
    """The job ended FAILED or CANCELLED; `code` is the google.rpc.Code stored with it."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)
