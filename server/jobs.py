"""The job machinery: admission, a queue drained by worker threads, cancellation and event streams.

Every adaptation runs as a job, including a one-call Adapt, which is a job that its caller
watches to the end. State lives in a JobStore, so a restarted server on the same data directory
resumes every job that was queued or running.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from google.rpc import code_pb2

from archadapt.adaptation import AdaptationResult, ServingConfig, TaskData, adapt_task
from archadapt.checkpoint import Checkpoint
from archadapt.errors import AdaptationCancelled
from archadapt_client.v1 import archadapt_pb2 as pb
from server.errors import AlreadyExists, FailedPrecondition, NotFound, OutOfRange, ResourceExhausted, ShuttingDown
from server.job_messages import (
    PHASES,
    budget,
    check_budget,
    check_job_id,
    check_options,
    parse_dataset,
    result_proto,
    serving_config,
)
from server.job_store import JobRecord, JobStore
from server.interrupt import ComputeSection, WorkerInterrupted
from server.metrics import ServerMetrics
from server.request_decoding import InvalidRequest, RequestLimits, decode_request
from server.status import status_proto_for

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024  # ModelChunk size limit of the contract
MAX_UPLOAD_CHUNK_BYTES = 4 * 1024 * 1024  # DatasetChunk size limit of the contract
MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Model size assumed by the disk admission check before any model has been stored. The default
# checkpoint's models measure about 0.2 MiB, so this errs on the safe side.
DEFAULT_MODEL_BYTES_ESTIMATE = 1024 * 1024
DEFAULT_RUN_SECONDS_ESTIMATE = 60.0
# Seconds a running job gets to stop at its own next step before its worker is interrupted.
INTERRUPT_GRACE_SECONDS = 0.3
INTERRUPT_REPEAT_SECONDS = 0.2
INTERRUPT_REPEATS = 50
DATASET_ID = re.compile(r"[0-9a-f]{64}")  # a SHA-256 in lowercase hex


@dataclass(frozen=True)
class JobLimits:
    max_queued_jobs: int = 100
    max_concurrent_jobs: int = 1  # one running job per device
    result_ttl_seconds: float = 7 * 24 * 3600.0  # 0 keeps results forever
    max_disk_bytes: int = 0  # 0 means no limit

    def __post_init__(self) -> None:
        if self.max_queued_jobs < 1 or self.max_concurrent_jobs < 1:
            raise ValueError(
                f"max_queued_jobs is {self.max_queued_jobs} and max_concurrent_jobs is {self.max_concurrent_jobs}; both must be 1 or more"
            )
        if not math.isfinite(self.result_ttl_seconds) or self.result_ttl_seconds < 0:
            raise ValueError(f"result_ttl_seconds is {self.result_ttl_seconds}; use 0 (keep forever) or a positive number of seconds")
        if self.max_disk_bytes < 0:
            raise ValueError(f"max_disk_bytes is {self.max_disk_bytes}; use 0 (no limit) or a positive byte count")

    def to_proto(self) -> pb.JobLimits:
        return pb.JobLimits(
            max_queued_jobs=self.max_queued_jobs, max_concurrent_jobs=self.max_concurrent_jobs,
            result_ttl_seconds=self.result_ttl_seconds, max_disk_bytes=self.max_disk_bytes,
        )


class JobManager:
    """Accept, run, cancel and report jobs of one checkpoint on one device."""

    def __init__(
        self,
        store: JobStore,
        checkpoint: Checkpoint,
        device: torch.device,
        limits: RequestLimits,
        config: ServingConfig,
        job_limits: JobLimits,
        metrics: ServerMetrics,
    ):
        self.store = store
        self.checkpoint = checkpoint
        self.device = device
        self.limits = limits
        self.config = config
        self.job_limits = job_limits
        self.metrics = metrics

        self._accepting = True
        self._stopping = threading.Event()
        # Guards claims and cancellations. Its notify_all wakes workers and watchers.
        self._changed = threading.Condition()
        self._admission = threading.Lock()
        self._generation = 0  # increases with every event, so watchers never miss a wake-up
        self._cancel_requests: dict[str, threading.Event] = {}
        self._decoded: dict[str, TaskData] = {}  # datasets decoded at submit, reused by the run
        self._threads: list[threading.Thread] = []
        self._sections: dict[str, ComputeSection] = {}  # job id -> the section that computes it

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Requeue the jobs that a previous server left RUNNING and start the workers."""
        resumed = self.store.requeue_running_jobs("resumed after the server stopped while the job ran")
        for job_id in resumed:
            logger.info("job %s: queued again after a server stop or crash", job_id)
        queued = self.store.count_jobs(pb.QUEUED)
        logger.info("job queue: %d queued (%d resumed), %d worker(s)", queued, len(resumed), self.job_limits.max_concurrent_jobs)
        self.metrics.track_gauges(
            queued=lambda: self.store.count_jobs(pb.QUEUED),
            running=lambda: self.store.count_jobs(pb.RUNNING),
            disk_bytes=self.store.disk_bytes,
        )
        for number in range(self.job_limits.max_concurrent_jobs):
            self._threads.append(threading.Thread(target=self._work, name=f"job-worker-{number}", daemon=True))
        if self.job_limits.result_ttl_seconds > 0:
            self._threads.append(threading.Thread(target=self._expire_results, name="job-expiry", daemon=True))
        for thread in self._threads:
            thread.start()

    def drain(self, timeout: float = 10.0) -> None:
        """Stop accepting work and interrupt running jobs, which stay queued for the next start."""
        self._accepting = False
        self._stopping.set()
        self._notify()
        for job_id in list(self._sections):
            self._interrupt_later(job_id)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            # Their jobs stay RUNNING in the store, and the next start requeues them.
            logger.warning("threads %s did not stop within %.1f s", alive, timeout)

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise ShuttingDown("the server is shutting down and accepts no new work; retry on another server or after it restarts")

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    # -- datasets ------------------------------------------------------------------------------

    def upload(self, chunks: Iterable[pb.DatasetChunk]) -> pb.DatasetInfo:
        """Store a dataset streamed in chunks, check it, and return its content-addressed id."""
        self._check_accepting()
        used = self.store.disk_bytes() if self.job_limits.max_disk_bytes else 0
        staged = self.store.staging_file()
        try:
            digest, size = hashlib.sha256(), 0
            with open(staged, "wb") as stream:
                for number, chunk in enumerate(chunks):
                    if len(chunk.data) > MAX_UPLOAD_CHUNK_BYTES:
                        raise InvalidRequest([(f"chunks[{number}].data", f"chunk has {len(chunk.data)} bytes; at most {MAX_UPLOAD_CHUNK_BYTES} are allowed per chunk")])
                    size += len(chunk.data)
                    if size > self.limits.max_dataset_bytes:
                        raise InvalidRequest([("data", f"the dataset exceeds {self.limits.max_dataset_bytes} bytes (max_dataset_bytes)")])
                    self._check_disk(used + size, "the upload")
                    digest.update(chunk.data)
                    stream.write(chunk.data)
                stream.flush()
                os.fsync(stream.fileno())
            if size == 0:
                raise InvalidRequest([("data", "the upload is empty; send a serialized Dataset message in one or more chunks")])
            dataset_id = digest.hexdigest()
            if self.store.has_dataset(dataset_id):
                logger.info("upload of %d bytes matches stored dataset %s", size, dataset_id)
                return self.store.add_dataset_file(staged, dataset_id, 0, 0)

            request = parse_dataset(staged.read_bytes(), "data")
            data = decode_request(request, self.checkpoint.spec, self.limits)
            return self.store.add_dataset_file(staged, dataset_id, len(request.images), data.num_classes)
        finally:
            staged.unlink(missing_ok=True)

    def _check_disk(self, needed_bytes: float, operation: str) -> None:
        limit = self.job_limits.max_disk_bytes
        if limit and needed_bytes > limit:
            raise ResourceExhausted(
                f"{operation} would take the data directory to {int(needed_bytes)} bytes, above max_disk_bytes={limit}; "
                "retry after finished results expire, or ask the operator to raise --max-disk-bytes",
                retry_after=min(self.job_limits.result_ttl_seconds or 3600.0, 3600.0),
            )

    # -- submission ----------------------------------------------------------------------------

    def submit(self, request: pb.SubmitJobRequest, call_deadline_seconds: float | None = None) -> JobRecord:
        """Validate, admit and durably queue a job; return it (or the job of a known idempotency key)."""
        self._check_accepting()
        violations = check_options(request.options)
        key = request.idempotency_key
        if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            violations.append(("idempotency_key", f"key has {len(key)} characters; at most {MAX_IDEMPOTENCY_KEY_CHARS} are allowed"))
        deadline_seconds = request.deadline_seconds
        if not math.isfinite(deadline_seconds) or deadline_seconds < 0:
            violations.append(("deadline_seconds", f"deadline_seconds is {deadline_seconds}; use 0 (none) or a positive number of seconds"))
        source = request.WhichOneof("dataset")
        if source is None:
            violations.append(("dataset", "the request names no dataset; set dataset_id or inline_dataset"))
        elif source == "dataset_id" and not DATASET_ID.fullmatch(request.dataset_id):
            violations.append(("dataset_id", f"dataset_id {request.dataset_id[:80]!r} is not 64 lowercase hex digits (a SHA-256)"))
        if violations:
            raise InvalidRequest(violations)

        dataset_bytes, data = None, None
        if source == "dataset_id":
            dataset_id = request.dataset_id
            if not self.store.has_dataset(dataset_id):
                raise NotFound(f"dataset {dataset_id} not found; upload it with UploadDataset first")
            check_budget(request.options, self.checkpoint, self.store.dataset_info(dataset_id).classes)
        else:
            adapt_request = pb.AdaptRequest(
                images=request.inline_dataset.images, labels=request.inline_dataset.labels,
                class_names=request.inline_dataset.class_names,
            )
            data = decode_request(adapt_request, self.checkpoint.spec, self.limits)
            check_budget(request.options, self.checkpoint, data.num_classes)
            dataset_bytes = request.inline_dataset.SerializeToString(deterministic=True)
            dataset_id = hashlib.sha256(dataset_bytes).hexdigest()

        return self._admit(dataset_id, dataset_bytes, data, request.options, key, deadline_seconds, call_deadline_seconds)

    def submit_adapt(self, request: pb.AdaptRequest, call_deadline_seconds: float | None) -> JobRecord:
        """Queue the job of a one-call Adapt request."""
        self._check_accepting()
        violations = check_options(request.options)
        if violations:
            raise InvalidRequest(violations)
        data = decode_request(request, self.checkpoint.spec, self.limits)
        check_budget(request.options, self.checkpoint, data.num_classes)
        dataset = pb.AdaptRequest()
        dataset.CopyFrom(request)
        dataset.ClearField("options")
        dataset_bytes = dataset.SerializeToString(deterministic=True)
        dataset_id = hashlib.sha256(dataset_bytes).hexdigest()
        return self._admit(dataset_id, dataset_bytes, data, request.options, "", 0.0, call_deadline_seconds)

    def _admit(
        self, dataset_id: str, dataset_bytes: bytes | None, data: TaskData | None, options: pb.AdaptOptions,
        key: str, deadline_seconds: float, call_deadline_seconds: float | None,
    ) -> JobRecord:
        # One admission at a time, so that concurrent submits cannot pass the queue or disk limit together.
        with self._admission:
            return self._admit_locked(dataset_id, dataset_bytes, data, options, key, deadline_seconds, call_deadline_seconds)

    def _admit_locked(
        self, dataset_id: str, dataset_bytes: bytes | None, data: TaskData | None, options: pb.AdaptOptions,
        key: str, deadline_seconds: float, call_deadline_seconds: float | None,
    ) -> JobRecord:
        if key:
            try:
                return self._match_idempotent(self.store.get_job_by_key(key), dataset_id, options)
            except NotFound:
                pass

        queued = self.store.count_jobs(pb.QUEUED)
        if queued >= self.job_limits.max_queued_jobs:
            raise ResourceExhausted(
                f"the queue is full with {queued} jobs (max_queued_jobs={self.job_limits.max_queued_jobs}); retry after the delay in the RetryInfo detail",
                retry_after=self._estimated_slot_seconds(),
            )
        if self.job_limits.max_disk_bytes:
            new_bytes = len(dataset_bytes) if dataset_bytes is not None and not self.store.has_dataset(dataset_id) else 0
            model_estimate = self.store.mean_model_bytes() or DEFAULT_MODEL_BYTES_ESTIMATE
            self._check_disk(self.store.disk_bytes() + new_bytes + model_estimate, "this job")

        if dataset_bytes is not None:
            self.store.add_dataset_bytes(dataset_bytes, data.labels.numel(), data.num_classes)
        deadlines = [d for d in (deadline_seconds, call_deadline_seconds) if d]
        deadline_time = time.time() + min(deadlines) if deadlines else 0.0
        with self._changed:  # no worker claims the job before its decoded dataset is in place
            job, created = self.store.create_job(dataset_id, options, key, deadline_time)
            if created and data is not None:
                self._decoded[job.job_id] = data
        if not created:  # the key was checked above under the admission lock, so this is a safeguard
            return self._match_idempotent(job, dataset_id, options)
        logger.info(
            "job %s: queued (dataset %s, seed %d, inner_steps %d, finetune_steps %d, max_parameters %d, "
            "max_multiply_accumulates %d, genotype_samples %d%s)",
            job.job_id, dataset_id, options.seed, options.inner_steps, options.finetune_steps, options.max_parameters,
            options.max_multiply_accumulates, options.genotype_samples,
            f", deadline in {deadline_time - time.time():.1f} s" if deadline_time else "",
        )
        self._notify()
        return job

    @staticmethod
    def _match_idempotent(job: JobRecord, dataset_id: str, options: pb.AdaptOptions) -> JobRecord:
        if job.dataset_id != dataset_id or job.options != options:
            raise AlreadyExists(
                f"idempotency key {job.idempotency_key!r} belongs to job {job.job_id} with another dataset or other options; "
                "use a new key for a new job"
            )
        logger.info("job %s: returned again for its idempotency key", job.job_id)
        return job

    def _estimated_slot_seconds(self) -> float:
        """Estimate the seconds until the queue has room: the mean run time per worker."""
        recent = self.store.recent_run_seconds()
        mean = sum(recent) / len(recent) if recent else DEFAULT_RUN_SECONDS_ESTIMATE
        return max(1.0, mean / self.job_limits.max_concurrent_jobs)

    # -- queries and cancellation --------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        return self.store.get_job(job_id)

    def to_proto(self, job: JobRecord) -> pb.Job:
        message = pb.Job(
            job_id=job.job_id, state=job.state, dataset_id=job.dataset_id, options=job.options,
            idempotency_key=job.idempotency_key, created_time=job.created_time, started_time=job.started_time,
            finished_time=job.finished_time, expire_time=job.expire_time, attempts=job.attempts,
            queue_position=self.store.queue_position(job), event_count=self.store.event_count(job.job_id),
            deadline_time=job.deadline_time,
        )
        if job.state in (pb.FAILED, pb.CANCELLED):
            message.error.CopyFrom(pb.JobError(code=job.error_code, message=job.error_message))
        if job.result is not None:
            message.result.CopyFrom(job.result)
        return message

    def list_jobs(self, request: pb.ListJobsRequest) -> tuple[list[JobRecord], str]:
        violations = []
        if request.page_size > MAX_PAGE_SIZE:
            violations.append(("page_size", f"page_size is {request.page_size}; allowed: 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}"))
        before_seq = None
        if request.page_token:
            if not request.page_token.isdigit() or len(request.page_token) > 18:
                violations.append(("page_token", f"page_token {request.page_token[:40]!r} was not returned by ListJobs; pass next_page_token unchanged"))
            else:
                before_seq = int(request.page_token)
        unknown = [state for state in request.states if state not in (pb.QUEUED, pb.RUNNING, pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)]
        if unknown:
            violations.append(("states", f"states {unknown[:5]} are not job states; allowed: 1 (QUEUED) to 5 (CANCELLED)"))
        if violations:
            raise InvalidRequest(violations)

        page_size = request.page_size or DEFAULT_PAGE_SIZE
        jobs = self.store.list_jobs(list(request.states), before_seq, page_size + 1)
        if len(jobs) > page_size:
            return jobs[:page_size], str(jobs[page_size - 1].seq)
        return jobs, ""

    def cancel(self, job_id: str, reason: str = "cancelled by CancelJob") -> JobRecord:
        """Cancel a queued job at once, or ask a running one to stop at its next step."""
        check_job_id(job_id)
        with self._changed:
            job = self.store.get_job(job_id)
            if job.state == pb.QUEUED:
                job = self.store.finish_job(
                    job_id, pb.CANCELLED, reason, self.job_limits.result_ttl_seconds,
                    error=pb.JobError(code=code_pb2.CANCELLED, message=f"the job was cancelled while queued: {reason}"),
                )
                self._decoded.pop(job_id, None)
                self.metrics.job_outcomes.labels(code="CANCELLED").inc()
                logger.info("job %s: cancelled while queued (%s)", job_id, reason)
            elif job.state == pb.RUNNING:
                self._cancel_requests.setdefault(job_id, threading.Event()).set()
                self._interrupt_later(job_id)
                logger.info("job %s: cancellation requested (%s)", job_id, reason)
            self._generation += 1
            self._changed.notify_all()
        return job

    def cancel_abandoned(self, job_id: str) -> None:
        """Cancel the job of an Adapt call whose caller has gone, unless the server is stopping."""
        if self._stopping.is_set():
            return  # the job stays queued for the next start
        try:
            if not self.store.get_job(job_id).is_final:
                self.cancel(job_id, reason="the Adapt call ended before the job finished")
        except NotFound:
            pass

    # -- events and models ---------------------------------------------------------------------

    def watch(self, job_id: str, from_index: int, is_active: Callable[[], bool]) -> Iterator[pb.JobEvent]:
        """Yield the job's events from `from_index` until the one that makes it final."""
        check_job_id(job_id)
        job = self.store.get_job(job_id)
        count = self.store.event_count(job_id)
        if from_index > count:  # a client can only have seen events that exist
            raise OutOfRange(f"from_index is {from_index} but job {job_id} has {count} events so far; use 0 to {count}")

        index = from_index
        while True:
            generation = self._generation
            final = self.store.get_job(job_id).is_final
            events = self.store.read_events(job_id, index)
            for event in events:
                yield event
            index += len(events)
            if events:
                continue
            if final:
                return
            if self._stopping.is_set():
                raise ShuttingDown(f"the server is shutting down; watch job {job_id} again with from_index={index} after it restarts")
            if not is_active():
                return
            with self._changed:
                if generation == self._generation:
                    self._changed.wait(0.5)

    def read_model(self, job_id: str, offset: int) -> Iterator[pb.ModelChunk]:
        check_job_id(job_id)
        job = self.store.get_job(job_id)
        if job.state != pb.SUCCEEDED or job.result is None:
            raise FailedPrecondition(f"job {job_id} is {pb.JobState.Name(job.state)}; only a SUCCEEDED job has a model")
        total = job.result.model_bytes
        if offset > total:
            raise OutOfRange(f"offset is {offset} but the model of job {job_id} has {total} bytes; use 0 to {total}")
        with self.store.open_model(job_id) as stream:
            stream.seek(offset)
            while offset < total:
                data = stream.read(min(CHUNK_BYTES, total - offset))
                if not data:
                    raise NotFound(f"the model file of job {job_id} ends at byte {offset}, before its recorded size {total}")
                yield pb.ModelChunk(offset=offset, data=data, total_bytes=total)
                offset += len(data)

    def _interrupt_later(self, job_id: str) -> None:
        """Interrupt the job's worker unless the job stops at its own next step within the grace period."""
        timer = threading.Timer(INTERRUPT_GRACE_SECONDS, self._interrupt, args=(job_id,))
        timer.daemon = True
        timer.start()

    def _interrupt(self, job_id: str) -> None:
        """Interrupt the job's worker, again every INTERRUPT_REPEAT_SECONDS while it keeps computing the job."""
        section = self._sections.get(job_id)
        if section is None or not section.interrupt(job_id):
            return
        logger.info("job %s: interrupted its worker, which had not stopped at a step within %.1f s", job_id, INTERRUPT_GRACE_SECONDS)
        # Code that catches BaseException can swallow one interruption, so repeat it.
        for _ in range(INTERRUPT_REPEATS):
            time.sleep(INTERRUPT_REPEAT_SECONDS)
            if not section.interrupt(job_id):
                return
        logger.error("job %s: the worker kept computing after %d interruptions", job_id, INTERRUPT_REPEATS + 1)

    # -- workers -------------------------------------------------------------------------------

    def _work(self) -> None:
        section = ComputeSection()
        # On CUDA each worker queues its jobs' kernels on a stream of its own, so that the kernels
        # of concurrent jobs can overlap instead of queueing behind each other on the default stream.
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        while not self._stopping.is_set():
            with self._changed:
                job = None if self._stopping.is_set() else self.store.claim_next_job()
                if job is None:
                    self._changed.wait(1.0)
                    continue
                self._generation += 1
                self._changed.notify_all()
            try:
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    self._run(job, section)
            except Exception as error:  # recording the outcome failed, for example on a full disk
                logger.exception("job %s: could not record the outcome", job.job_id)
                self._fail_unrecorded(job.job_id, error)
            finally:
                self._cancel_requests.pop(job.job_id, None)
                self._decoded.pop(job.job_id, None)
                self._notify()

    def _fail_unrecorded(self, job_id: str, error: Exception) -> None:
        """Mark a job FAILED after its outcome could not be stored; it stays RUNNING for the next start if even that fails."""
        try:
            self.store.finish_job(
                job_id, pb.FAILED, "failed to record the outcome", self.job_limits.result_ttl_seconds,
                error=pb.JobError(code=code_pb2.INTERNAL, message=f"the server could not store the job's outcome: {type(error).__name__}"),
            )
        except Exception:
            logger.exception("job %s: could not mark the job FAILED either; the next start runs it again", job_id)
            return
        self._count_outcome("INTERNAL", 0.0)

    def _run(self, job: JobRecord, section: ComputeSection) -> None:
        job_id = job.job_id
        cancel_request = self._cancel_requests.setdefault(job_id, threading.Event())
        started = time.monotonic()
        phases = PhaseLog(job_id)
        logger.info("job %s: started, attempt %d", job_id, job.attempts)

        def should_stop() -> bool:
            deadline_passed = job.deadline_time > 0 and time.time() >= job.deadline_time
            return self._stopping.is_set() or cancel_request.is_set() or deadline_passed

        def on_progress(phase: str, step: int, total: int, loss: float) -> None:
            # Raising here also stops the phases that check no flag of their own (derive, export).
            if should_stop():
                raise AdaptationCancelled(f"stopped before {phase} step {step}")
            phases.enter(phase)
            progress = pb.Progress(phase=PHASES[phase], step=step, total_steps=total, loss=loss, elapsed_seconds=time.time() - job.created_time)
            self.store.append_progress(job_id, progress)
            self._notify()

        self._sections[job_id] = section
        deadline_timer = None
        if job.deadline_time:
            delay = max(0.0, job.deadline_time - time.time()) + INTERRUPT_GRACE_SECONDS
            deadline_timer = threading.Timer(delay, self._interrupt, args=(job_id,))
            deadline_timer.daemon = True
            deadline_timer.start()
        try:
            with section.running(job_id):
                if should_stop():  # cancelled or interrupted before the section began
                    raise AdaptationCancelled("stopped before the job began")
                decode_started = time.perf_counter()
                data = self._decoded.pop(job_id, None)
                if data is None:
                    data = decode_request(parse_dataset(self.store.read_dataset(job.dataset_id), "dataset"), self.checkpoint.spec, self.limits)
                config = serving_config(self.config, job.options)
                on_progress("validate", 1, 1, 0.0)
                decode_seconds = time.perf_counter() - decode_started
                result = adapt_task(
                    self.checkpoint, data, config, budget=budget(job.options), seed=job.options.seed, device=self.device,
                    on_progress=on_progress, should_stop=should_stop,
                )
                result.timings["validate"] = result.timings.get("validate", 0.0) + decode_seconds
        except (AdaptationCancelled, WorkerInterrupted) as stopped:
            phases.close()
            self._finish_stopped(job, cancel_request, stopped, time.monotonic() - started)
        except Exception as error:
            phases.close()
            status = status_proto_for(error)
            logger.log(
                logging.ERROR if status.code == code_pb2.INTERNAL else logging.WARNING,
                "job %s: failed after %.2f s with %s: %s", job_id, time.monotonic() - started,
                code_pb2.Code.Name(status.code), error, exc_info=status.code == code_pb2.INTERNAL,
            )
            self.store.finish_job(
                job_id, pb.FAILED, "failed", self.job_limits.result_ttl_seconds,
                error=pb.JobError(code=status.code, message=status.message),
            )
            self._count_outcome(code_pb2.Code.Name(status.code), time.monotonic() - started)
        else:
            phases.close()
            self._finish_succeeded(job, result, time.monotonic() - started)
        finally:
            self._sections.pop(job_id, None)
            if deadline_timer is not None:
                deadline_timer.cancel()

    def _finish_stopped(self, job: JobRecord, cancel_request: threading.Event, error: BaseException, seconds: float) -> None:
        job_id = job.job_id
        stopped = str(error) or "interrupted in the middle of a step"
        if cancel_request.is_set():
            self.store.finish_job(
                job_id, pb.CANCELLED, "cancelled", self.job_limits.result_ttl_seconds,
                error=pb.JobError(code=code_pb2.CANCELLED, message=f"the job was cancelled: {stopped}"),
            )
            logger.info("job %s: cancelled after %.2f s (%s)", job_id, seconds, stopped)
            self._count_outcome("CANCELLED", seconds)
        elif self._stopping.is_set():
            self.store.requeue_job(job_id, "interrupted by a server shutdown; runs again at the next start")
            logger.info("job %s: interrupted by shutdown after %.2f s; queued for the next start", job_id, seconds)
        else:
            message = f"the job passed its deadline and stopped ({stopped})"
            self.store.finish_job(
                job_id, pb.FAILED, "deadline exceeded", self.job_limits.result_ttl_seconds,
                error=pb.JobError(code=code_pb2.DEADLINE_EXCEEDED, message=message),
            )
            logger.warning("job %s: deadline exceeded after %.2f s", job_id, seconds)
            self._count_outcome("DEADLINE_EXCEEDED", seconds)

    def _finish_succeeded(self, job: JobRecord, result: AdaptationResult, seconds: float) -> None:
        message = result_proto(result, job.job_id, self.checkpoint)
        self.store.finish_job(
            job.job_id, pb.SUCCEEDED, "succeeded", self.job_limits.result_ttl_seconds, result=message, model=result.onnx_bytes,
        )
        for phase, phase_seconds in result.timings.items():
            self.metrics.phase_seconds.labels(phase=phase).observe(phase_seconds)
        timings = ", ".join(f"{phase} {phase_seconds:.2f} s" for phase, phase_seconds in result.timings.items())
        logger.info(
            "job %s: succeeded in %.2f s (%s); model %d bytes, validation accuracy %.3f on %d images",
            job.job_id, seconds, timings, len(result.onnx_bytes), result.validation_accuracy, result.validation_examples,
        )
        self._count_outcome("OK", seconds)

    def _count_outcome(self, code: str, seconds: float) -> None:
        self.metrics.job_outcomes.labels(code=code).inc()
        self.metrics.job_seconds.observe(seconds)

    def _expire_results(self) -> None:
        ttl = self.job_limits.result_ttl_seconds
        interval = min(60.0, max(0.2, ttl / 4))
        while not self._stopping.wait(interval):
            try:
                jobs, datasets = self.store.delete_expired(time.time(), ttl)
            except Exception:  # the next round tries again
                logger.exception("deleting expired results failed")
                continue
            if jobs or datasets:
                logger.info("deleted %d expired job(s) and %d unused dataset(s)", jobs, datasets)


class PhaseLog:
    """Log each phase change of a job with the duration of the phase that ended."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.phase: str | None = None
        self.started = 0.0

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.close()
        self.phase, self.started = phase, time.perf_counter()
        logger.info("job %s: phase %s started", self.job_id, phase)

    def close(self) -> None:
        if self.phase is not None:
            logger.info("job %s: phase %s ended after %.2f s", self.job_id, self.phase, time.perf_counter() - self.started)
            self.phase = None
