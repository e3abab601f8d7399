"""Durable state of the job service: SQLite for jobs and events, files for datasets and models.

Layout of a data directory:

    archadapt.sqlite3 (+ -wal, -shm)   jobs, their events and the dataset index
    datasets/<sha256>.pb               serialized Dataset messages, named by their SHA-256
    models/<job id>.onnx               the model of every SUCCEEDED job
    tmp/                               partial uploads and models; emptied at start

Every write that the server acknowledges is durable first: files are written to tmp/, flushed
with fsync and renamed into place, then the directory is flushed, and the row that refers to them
is committed with SQLite's WAL in synchronous=FULL mode. Progress events go through a second
connection in synchronous=NORMAL mode: a power loss may drop the last few of them, but a crash of
the server process alone (kill -9) loses none.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from archadapt_client.v1 import archadapt_pb2 as pb
from server.errors import NotFound

logger = logging.getLogger(__name__)

DATABASE_FILE = "archadapt.sqlite3"
FINAL_STATES = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    images INTEGER NOT NULL,
    classes INTEGER NOT NULL,
    created_time REAL NOT NULL,
    last_used_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    dataset_id TEXT NOT NULL,
    options BLOB NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_time REAL NOT NULL,
    started_time REAL NOT NULL DEFAULT 0,
    finished_time REAL NOT NULL DEFAULT 0,
    expire_time REAL NOT NULL DEFAULT 0,
    deadline_time REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    result BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    event_index INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, event_index)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table."""

    seq: int
    job_id: str
    state: int
    dataset_id: str
    options: pb.AdaptOptions
    idempotency_key: str
    created_time: float
    started_time: float
    finished_time: float
    expire_time: float
    deadline_time: float
    attempts: int
    error_code: int
    error_message: str
    result: pb.AdaptResult | None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def write_file_durably(path: Path, data: bytes, staging: Path) -> None:
    """Write `data` to `path` so that a crash leaves either no file or the whole file."""
    handle, temporary = tempfile.mkstemp(dir=staging, prefix=path.name + ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class JobStore:
    """Thread-safe access to one data directory. Every method commits before it returns."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.datasets_dir = self.data_dir / "datasets"
        self.models_dir = self.data_dir / "models"
        self.staging_dir = self.data_dir / "tmp"
        for directory in (self.data_dir, self.datasets_dir, self.models_dir, self.staging_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.staging_dir.iterdir():
            leftover.unlink()

        self._lock = threading.RLock()
        database = self.data_dir / DATABASE_FILE
        self._durable = self._connect(database, synchronous="FULL")
        self._durable.executescript(_SCHEMA)
        self._events = self._connect(database, synchronous="NORMAL")
        self._next_event_index: dict[str, int] = {}

    @staticmethod
    def _connect(database: Path, synchronous: str) -> sqlite3.Connection:
        connection = sqlite3.connect(database, check_same_thread=False, isolation_level=None, timeout=30.0)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        return connection

    def close(self) -> None:
        with self._lock:
            self._events.close()
            self._durable.close()

    # -- datasets ------------------------------------------------------------------------------

    def dataset_path(self, dataset_id: str) -> Path:
        return self.datasets_dir / f"{dataset_id}.pb"

    def has_dataset(self, dataset_id: str) -> bool:
        with self._lock:
            row = self._durable.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", (dataset_id,)).fetchone()
        return row is not None and self.dataset_path(dataset_id).is_file()

    def dataset_info(self, dataset_id: str) -> pb.DatasetInfo:
        with self._lock:
            row = self._durable.execute(
                "SELECT size_bytes, images, classes FROM datasets WHERE dataset_id = ?", (dataset_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found; upload it with UploadDataset first")
        return pb.DatasetInfo(dataset_id=dataset_id, size_bytes=row[0], images=row[1], classes=row[2])

    def add_dataset_file(self, staged: Path, dataset_id: str, images: int, classes: int) -> pb.DatasetInfo:
        """Move a staged, flushed dataset file into place and record it; an existing copy wins."""
        with self._lock:
            if self.has_dataset(dataset_id):
                staged.unlink(missing_ok=True)
                self._durable.execute("UPDATE datasets SET last_used_time = ? WHERE dataset_id = ?", (time.time(), dataset_id))
                return self.dataset_info(dataset_id)
            target = self.dataset_path(dataset_id)
            size = staged.stat().st_size
            os.replace(staged, target)
            fsync_directory(self.datasets_dir)
            now = time.time()
            self._durable.execute(
                "INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?, ?, ?)", (dataset_id, size, images, classes, now, now)
            )
        logger.info("stored dataset %s: %d bytes, %d images, %d classes", dataset_id, size, images, classes)
        return pb.DatasetInfo(dataset_id=dataset_id, size_bytes=size, images=images, classes=classes)

    def add_dataset_bytes(self, data: bytes, images: int, classes: int) -> pb.DatasetInfo:
        dataset_id = hashlib.sha256(data).hexdigest()
        if self.has_dataset(dataset_id):
            with self._lock:
                self._durable.execute("UPDATE datasets SET last_used_time = ? WHERE dataset_id = ?", (time.time(), dataset_id))
            return self.dataset_info(dataset_id)
        staged = self.staging_file()
        with open(staged, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return self.add_dataset_file(staged, dataset_id, images, classes)

    def read_dataset(self, dataset_id: str) -> bytes:
        try:
            return self.dataset_path(dataset_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"dataset {dataset_id!r} not found in {self.datasets_dir}") from None

    def staging_file(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self.staging_dir, prefix="upload.")
        os.close(handle)
        return Path(name)

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(
        self, dataset_id: str, options: pb.AdaptOptions, idempotency_key: str, deadline_time: float
    ) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job, or return the job that already has `idempotency_key`.

        Returns (job, created). The caller compares dataset and options of an existing job.
        """
        with self._lock:
            if idempotency_key:
                existing = self._durable.execute("SELECT job_id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if existing is not None:
                    return self.get_job(existing[0]), False
            job_id = uuid.uuid4().hex
            now = time.time()
            event = pb.JobEvent(index=0, time=now, state_change=pb.JobStateChange(state=pb.QUEUED, reason="submitted"))
            self._durable.execute("BEGIN IMMEDIATE")
            try:
                self._durable.execute(
                    "INSERT INTO jobs (job_id, state, dataset_id, options, idempotency_key, created_time, deadline_time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, pb.QUEUED, dataset_id, options.SerializeToString(), idempotency_key or None, now, deadline_time),
                )
                self._durable.execute("UPDATE datasets SET last_used_time = ? WHERE dataset_id = ?", (now, dataset_id))
                self._durable.execute("INSERT INTO events VALUES (?, ?, ?)", (job_id, 0, event.SerializeToString()))
                self._durable.execute("COMMIT")
            except BaseException:
                self._durable.execute("ROLLBACK")
                raise
            self._next_event_index[job_id] = 1
            return self.get_job(job_id), True

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._durable.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id!r} not found; it never existed or its results expired")
        return _record(row)

    def get_job_by_key(self, idempotency_key: str) -> JobRecord:
        with self._lock:
            row = self._durable.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        if row is None:
            raise NotFound(f"no job has idempotency key {idempotency_key!r}")
        return _record(row)

    def list_jobs(self, states: list[int], before_seq: int | None, limit: int) -> list[JobRecord]:
        """Return up to `limit` jobs, newest first, with seq below `before_seq` when it is given."""
        conditions, parameters = [], []
        if states:
            conditions.append(f"state IN ({', '.join('?' * len(states))})")
            parameters.extend(states)
        if before_seq is not None:
            conditions.append("seq < ?")
            parameters.append(before_seq)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._lock:
            rows = self._durable.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*parameters, limit)
            ).fetchall()
        return [_record(row) for row in rows]

    def count_jobs(self, state: int) -> int:
        with self._lock:
            return self._durable.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]

    def queue_position(self, job: JobRecord) -> int:
        if job.state != pb.QUEUED:
            return 0
        with self._lock:
            return self._durable.execute("SELECT COUNT(*) FROM jobs WHERE state = ? AND seq < ?", (pb.QUEUED, job.seq)).fetchone()[0]

    def claim_next_job(self) -> JobRecord | None:
        """Move the oldest QUEUED job to RUNNING and return it, or return None when none is queued."""
        with self._lock:
            row = self._durable.execute("SELECT job_id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (pb.QUEUED,)).fetchone()
            if row is None:
                return None
            job_id = row[0]
            self._change_state(job_id, pb.RUNNING, "started", extra={"started_time": time.time()}, increment_attempts=True)
            return self.get_job(job_id)

    def requeue_running_jobs(self, reason: str) -> list[str]:
        """Put every RUNNING job back into the queue, as after a restart; return their ids."""
        with self._lock:
            job_ids = [row[0] for row in self._durable.execute("SELECT job_id FROM jobs WHERE state = ? ORDER BY seq", (pb.RUNNING,))]
            for job_id in job_ids:
                self._change_state(job_id, pb.QUEUED, reason)
        return job_ids

    def requeue_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            if self.get_job(job_id).state == pb.RUNNING:
                self._change_state(job_id, pb.QUEUED, reason)

    def finish_job(
        self, job_id: str, state: int, reason: str, ttl_seconds: float,
        error: pb.JobError | None = None, result: pb.AdaptResult | None = None, model: bytes | None = None,
    ) -> JobRecord:
        """Record a final state; for SUCCEEDED the model file is written and flushed first."""
        if model is not None:
            write_file_durably(self.model_path(job_id), model, self.staging_dir)
        now = time.time()
        extra: dict[str, object] = {"finished_time": now, "expire_time": now + ttl_seconds if ttl_seconds > 0 else 0.0}
        if error is not None:
            extra.update(error_code=error.code, error_message=error.message)
        if result is not None:
            extra["result"] = result.SerializeToString()
        with self._lock:
            self._change_state(job_id, state, reason, extra=extra, error=error)
            return self.get_job(job_id)

    def _change_state(
        self, job_id: str, state: int, reason: str, extra: dict[str, object] | None = None,
        error: pb.JobError | None = None, increment_attempts: bool = False,
    ) -> None:
        """Update the job row and append its state-change event in one durable transaction."""
        columns = {"state": state, **(extra or {})}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        if increment_attempts:
            assignments += ", attempts = attempts + 1"
        index = self._allocate_event_index(job_id)
        event = pb.JobEvent(index=index, time=time.time(), state_change=pb.JobStateChange(state=state, reason=reason, error=error))
        self._durable.execute("BEGIN IMMEDIATE")
        try:
            self._durable.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*columns.values(), job_id))
            self._durable.execute("INSERT INTO events VALUES (?, ?, ?)", (job_id, index, event.SerializeToString()))
            self._durable.execute("COMMIT")
        except BaseException:
            self._durable.execute("ROLLBACK")
            self._next_event_index.pop(job_id, None)
            raise

    # -- events --------------------------------------------------------------------------------

    def _allocate_event_index(self, job_id: str) -> int:
        if job_id not in self._next_event_index:
            row = self._durable.execute("SELECT MAX(event_index) FROM events WHERE job_id = ?", (job_id,)).fetchone()
            self._next_event_index[job_id] = 0 if row[0] is None else row[0] + 1
        index = self._next_event_index[job_id]
        self._next_event_index[job_id] = index + 1
        return index

    def append_progress(self, job_id: str, progress: pb.Progress) -> None:
        with self._lock:
            index = self._allocate_event_index(job_id)
            event = pb.JobEvent(index=index, time=time.time(), progress=progress)
            self._events.execute("INSERT INTO events VALUES (?, ?, ?)", (job_id, index, event.SerializeToString()))

    def read_events(self, job_id: str, from_index: int, limit: int = 500) -> list[pb.JobEvent]:
        with self._lock:
            rows = self._durable.execute(
                "SELECT event FROM events WHERE job_id = ? AND event_index >= ? ORDER BY event_index LIMIT ?",
                (job_id, from_index, limit),
            ).fetchall()
        return [pb.JobEvent.FromString(row[0]) for row in rows]

    def event_count(self, job_id: str) -> int:
        with self._lock:
            row = self._durable.execute("SELECT MAX(event_index) FROM events WHERE job_id = ?", (job_id,)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    # -- models, expiry and disk use -----------------------------------------------------------

    def model_path(self, job_id: str) -> Path:
        return self.models_dir / f"{job_id}.onnx"

    def open_model(self, job_id: str) -> BinaryIO:
        try:
            return open(self.model_path(job_id), "rb")
        except FileNotFoundError:
            raise NotFound(f"the model of job {job_id!r} is missing from {self.models_dir}") from None

    def delete_expired(self, now: float, ttl_seconds: float) -> tuple[int, int]:
        """Delete finished jobs past their expire time and datasets unused for `ttl_seconds`.

        Returns (jobs deleted, datasets deleted). A dataset that any remaining job references
        is kept.
        """
        with self._lock:
            expired = [
                row[0] for row in self._durable.execute(
                    "SELECT job_id FROM jobs WHERE expire_time > 0 AND expire_time <= ?", (now,)
                )
            ]
            for job_id in expired:
                self._durable.execute("BEGIN IMMEDIATE")
                self._durable.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                self._durable.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
                self._durable.execute("COMMIT")
                self._next_event_index.pop(job_id, None)
                self.model_path(job_id).unlink(missing_ok=True)
            unused = [
                row[0] for row in self._durable.execute(
                    "SELECT dataset_id FROM datasets WHERE last_used_time <= ? "
                    "AND dataset_id NOT IN (SELECT dataset_id FROM jobs)",
                    (now - ttl_seconds,),
                )
            ]
            for dataset_id in unused:
                self._durable.execute("DELETE FROM datasets WHERE dataset_id = ?", (dataset_id,))
                self.dataset_path(dataset_id).unlink(missing_ok=True)
        return len(expired), len(unused)

    def disk_bytes(self) -> int:
        """Return the bytes of every file under the data directory."""
        total = 0
        for directory, _, files in os.walk(self.data_dir):
            for name in files:
                try:
                    total += os.stat(os.path.join(directory, name)).st_size
                except FileNotFoundError:  # deleted while walking
                    pass
        return total

    def mean_model_bytes(self) -> float | None:
        sizes = [entry.stat().st_size for entry in os.scandir(self.models_dir) if entry.is_file()]
        return sum(sizes) / len(sizes) if sizes else None

    def recent_run_seconds(self, limit: int = 20) -> list[float]:
        with self._lock:
            rows = self._durable.execute(
                "SELECT finished_time - started_time FROM jobs WHERE state = ? AND started_time > 0 ORDER BY seq DESC LIMIT ?",
                (pb.SUCCEEDED, limit),
            ).fetchall()
        return [row[0] for row in rows]


_JOB_COLUMNS = (
    "seq, job_id, state, dataset_id, options, idempotency_key, created_time, started_time, finished_time, "
    "expire_time, deadline_time, attempts, error_code, error_message, result"
)


def _record(row: tuple) -> JobRecord:
    return JobRecord(
        seq=row[0], job_id=row[1], state=row[2], dataset_id=row[3],
        options=pb.AdaptOptions.FromString(row[4]), idempotency_key=row[5] or "",
        created_time=row[6], started_time=row[7], finished_time=row[8], expire_time=row[9],
        deadline_time=row[10], attempts=row[11], error_code=row[12], error_message=row[13],
        result=pb.AdaptResult.FromString(row[14]) if row[14] is not None else None,
    )
