"""The Adaptation servicer: translates messages and calls the job machinery in server/jobs.py."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator

import grpc
import onnxruntime
import torch
from google.protobuf.message import Message

import archadapt
from archadapt.search_space import InputSpec
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from server.errors import StoredJobFailure
from server.jobs import JobManager
from server.metrics import ServerMetrics
from server.request_decoding import InvalidRequest
from server.request_parsing import UnparsableRequest
from server.status import status_for

logger = logging.getLogger(__name__)

# Client errors are expected in normal operation and logged as warnings, everything else as an error.
_CLIENT_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
})
# A gRPC deadline further away than this counts as none.
_NO_DEADLINE_SECONDS = 365 * 24 * 3600.0


def parsed(request: object) -> object:
    """Return the request, raising InvalidRequest for an unparsable one; check each message of a request stream."""
    if isinstance(request, UnparsableRequest):
        raise InvalidRequest([("request", request.describe())])
    if isinstance(request, Message):
        return request
    return (parsed(message) for message in request)  # a client stream


def rpc(method: Callable) -> Callable:
    """Map every exception of an RPC handler to a status in one place, and count outcomes by code."""
    name = method.__name__

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streaming(self: AdaptationService, request: object, context: grpc.ServicerContext) -> Iterator:
            try:
                yield from method(self, parsed(request), context)
            except GeneratorExit:  # the client cancelled or the deadline passed
                self._count(name, grpc.StatusCode.CANCELLED)
                raise
            except Exception as error:
                self._abort(name, error, context)
            else:
                self._count(name, grpc.StatusCode.OK)

        return streaming

    @functools.wraps(method)
    def unary(self: AdaptationService, request: object, context: grpc.ServicerContext) -> object:
        try:
            response = method(self, parsed(request), context)
        except Exception as error:
            self._abort(name, error, context)
        self._count(name, grpc.StatusCode.OK)
        return response

    return unary


class AdaptationService(pb_grpc.AdaptationServicer):
    """Serve one checkpoint. Jobs run in the JobManager's workers, one per device by default."""

    def __init__(self, jobs: JobManager, metrics: ServerMetrics):
        self.jobs = jobs
        self.metrics = metrics
        self.checkpoint = jobs.checkpoint

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self.metrics.rpc_outcomes.labels(method=method, code=code.name).inc()

    def _abort(self, method: str, error: Exception, context: grpc.ServicerContext) -> None:
        status = status_for(error)
        level = logging.WARNING if status.code in _CLIENT_CODES else logging.ERROR
        logger.log(level, "%s from %s failed with %s: %s", method, context.peer(), status.code.name, error, exc_info=level == logging.ERROR)
        self._count(method, status.code)
        context.abort_with_status(status)

    @rpc
    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        space, spec = self.checkpoint.space, self.checkpoint.spec
        config = self.jobs.config
        return pb.ServerInfo(
            input_spec=input_spec_proto(spec),
            search_space=pb.SearchSpace(
                primitives=list(space.primitives), nodes=space.nodes, cells=space.cells,
                reduce_cells=list(space.reduce_cells), channels=space.channels,
                never_sample_none=not space.sample_none, final_relu=space.final_relu,
                sample_two_inputs=space.sample_two_inputs, constant_channels=space.constant_channels,
            ),
            limits=self.jobs.limits.to_proto(),
            archadapt_version=archadapt.__version__,
            checkpoint_id=self.checkpoint.checkpoint_id,
            device=str(self.jobs.device),
            torch_version=torch.__version__,
            onnxruntime_version=onnxruntime.__version__,
            default_inner_steps=config.inner.inner_steps,
            default_finetune_steps=config.finetune.steps,
            default_genotype_samples=config.genotype_samples,
            job_limits=self.jobs.job_limits.to_proto(),
        )

    @rpc
    def Adapt(self, request: pb.AdaptRequest, context: grpc.ServicerContext) -> Iterator[pb.AdaptEvent]:
        received = time.perf_counter()
        job = self.jobs.submit_adapt(request, call_deadline(context))
        job_id = job.job_id
        logger.info("Adapt from %s runs as job %s with %d images", context.peer(), job_id, len(request.images))
        context.add_callback(lambda: self.jobs.cancel_abandoned(job_id))

        for event in self.jobs.watch(job_id, 0, context.is_active):
            if event.WhichOneof("event") == "progress":
                yield pb.AdaptEvent(progress=event.progress)

        job = self.jobs.get(job_id)
        if not job.is_final:  # the caller has gone
            self.jobs.cancel_abandoned(job_id)
            return
        if job.state != pb.SUCCEEDED:
            raise StoredJobFailure(job.error_code, job.error_message)
        for chunk in self.jobs.read_model(job_id, 0):
            yield pb.AdaptEvent(model_chunk=chunk)
        yield pb.AdaptEvent(result=job.result)
        logger.info("Adapt job %s: sent its model and result %.2f s after the request", job_id, time.perf_counter() - received)

    @rpc
    def UploadDataset(self, request_iterator: Iterator[pb.DatasetChunk], context: grpc.ServicerContext) -> pb.DatasetInfo:
        return self.jobs.upload(request_iterator)

    @rpc
    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self.jobs.to_proto(self.jobs.submit(request))

    @rpc
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self.jobs.to_proto(self.jobs.get(request.job_id))

    @rpc
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        yield from self.jobs.watch(request.job_id, request.from_index, context.is_active)

    @rpc
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self.jobs.cancel(request.job_id)
        return self.jobs.to_proto(self.jobs.get(request.job_id))

    @rpc
    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        jobs, next_page_token = self.jobs.list_jobs(request)
        return pb.ListJobsResponse(jobs=[self.jobs.to_proto(job) for job in jobs], next_page_token=next_page_token)

    @rpc
    def DownloadModel(self, request: pb.DownloadModelRequest, context: grpc.ServicerContext) -> Iterator[pb.ModelChunk]:
        yield from self.jobs.read_model(request.job_id, request.offset)


def call_deadline(context: grpc.ServicerContext) -> float | None:
    """Return the seconds left before the call's deadline, or None when it has none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_SECONDS:
        return None
    return max(remaining, 0.001)


def input_spec_proto(spec: InputSpec) -> pb.InputSpec:
    return pb.InputSpec(channels=spec.channels, height=spec.height, width=spec.width, mean=list(spec.mean), std=list(spec.std))
