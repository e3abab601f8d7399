"""Stopping a worker thread's computation from another thread.

The adaptation checks for cancellation between steps, but one phase runs for seconds without a
check: the ONNX export of the default checkpoint took about 7 s on 2 CPU cores. A ComputeSection
lets another thread raise an exception inside the worker while it runs the section, so a
cancellation lands within a fraction of a second there too.

CPython delivers such an exception at the worker's next bytecode boundary, never inside a C or
C++ call, so torch kernels finish their current operation first. Context managers and finally
blocks of the interrupted code run as the exception unwinds. The exception derives from
BaseException because library code catches Exception broadly: torch's ONNX exporter (2.13) logs
and drops every Exception raised while it looks up an operator's overload.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class WorkerInterrupted(BaseException):
    """Raised inside a worker thread whose job was cancelled while it computed."""


def _set_async_exception(thread_id: int, exception_type: type[BaseException] | None) -> int:
    """Make `exception_type` pending in the thread (None clears a pending one); return threads changed."""
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception_type) if exception_type is not None else None
    )


class ComputeSection:
    """The part of a worker thread that `interrupt` may stop, tagged with the job it computes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._job_id: str | None = None

    @contextmanager
    def running(self, job_id: str) -> Iterator[None]:
        with self._lock:
            self._thread_id, self._job_id = threading.get_ident(), job_id
        try:
            yield
        finally:
            with self._lock:
                self._thread_id = self._job_id = None
                # An exception made pending just before the section ended must not reach later code.
                _set_async_exception(threading.get_ident(), None)

    def interrupt(self, job_id: str, exception_type: type[BaseException] = WorkerInterrupted) -> bool:
        """Raise `exception_type` in the worker if it still computes `job_id`; return whether it did."""
        with self._lock:
            if self._job_id != job_id or self._thread_id is None:
                return False
            changed = _set_async_exception(self._thread_id, exception_type)
        if changed != 1:
            logger.error("interrupting job %s changed %d threads instead of 1", job_id, changed)
            return False
        return True
