"""The Adaptation servicer: translates messages and calls the core adaptation pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
import time
import uuid
from typing import Iterator

import grpc
import onnxruntime
import torch

import archadapt
from archadapt.adaptation import AdaptationResult, ServingConfig, adapt_task
from archadapt.checkpoint import Checkpoint
from archadapt.config import FinetuneConfig
from archadapt.search_space import InputSpec
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from server.request_decoding import InvalidRequest, RequestLimits, decode_request
from server.status import status_for

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024  # ModelChunk size limit of the contract
PHASES = {
    "validate": pb.PHASE_VALIDATE,
    "adapt": pb.PHASE_ADAPT,
    "derive": pb.PHASE_DERIVE,
    "finetune": pb.PHASE_FINETUNE,
    "evaluate": pb.PHASE_EVALUATE,
    "export": pb.PHASE_EXPORT,
}
MAX_STEPS = 10_000  # upper bound on inner_steps and finetune_steps of a request


class AdaptationService(pb_grpc.AdaptationServicer):
    """Serve one checkpoint. Adaptations run one at a time per device, and others wait in turn."""

    def __init__(self, checkpoint: Checkpoint, device: torch.device, limits: RequestLimits, config: ServingConfig = ServingConfig()):
        self.checkpoint = checkpoint
        self.device = device
        self.limits = limits
        self.config = config
        self._device_lock = threading.Lock()

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        space, spec = self.checkpoint.space, self.checkpoint.spec
        return pb.ServerInfo(
            input_spec=input_spec_proto(spec),
            search_space=pb.SearchSpace(
                primitives=list(space.primitives), nodes=space.nodes, cells=space.cells,
                reduce_cells=list(space.reduce_cells), channels=space.channels,
            ),
            limits=self.limits.to_proto(),
            archadapt_version=archadapt.__version__,
            checkpoint_id=self.checkpoint.checkpoint_id,
            device=str(self.device),
            torch_version=torch.__version__,
            onnxruntime_version=onnxruntime.__version__,
            default_inner_steps=self.config.inner.inner_steps,
            default_finetune_steps=self.config.finetune.steps,
        )

    def Adapt(self, request: pb.AdaptRequest, context: grpc.ServicerContext) -> Iterator[pb.AdaptEvent]:
        request_id = uuid.uuid4().hex[:12]
        received = time.perf_counter()
        logger.info("request %s: Adapt started with %d images from %s", request_id, len(request.images), context.peer())
        try:
            yield from self._adapt(request, context, request_id, received)
        except Exception as error:  # every failure is logged here and mapped to a status once
            status = status_for(error)
            level = logging.WARNING if status.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED) else logging.ERROR
            logger.log(
                level, "request %s: failed after %.2f s with %s: %s", request_id,
                time.perf_counter() - received, status.code.name, error,
                exc_info=level == logging.ERROR,
            )
            context.abort_with_status(status)
        else:
            logger.info("request %s: succeeded in %.2f s", request_id, time.perf_counter() - received)

    def _adapt(self, request: pb.AdaptRequest, context: grpc.ServicerContext, request_id: str, received: float) -> Iterator[pb.AdaptEvent]:
        config = self._serving_config(request.options)
        data = decode_request(request, self.checkpoint.spec, self.limits)
        decode_seconds = time.perf_counter() - received
        logger.info("request %s: %d images, %d classes", request_id, data.labels.numel(), data.num_classes)

        events: queue.Queue = queue.Queue()
        outcome: dict = {}

        def progress(phase: str, step: int, total: int, loss: float) -> None:
            events.put(pb.AdaptEvent(progress=pb.Progress(
                phase=PHASES[phase], step=step, total_steps=total, loss=loss,
                elapsed_seconds=time.perf_counter() - received,
            )))

        def work() -> None:
            try:
                with self._device_lock:
                    progress("validate", 1, 1, 0.0)
                    outcome["result"] = adapt_task(
                        self.checkpoint, data, config, seed=request.options.seed, device=self.device,
                        on_progress=progress, should_stop=lambda: not context.is_active(),
                    )
            except BaseException as error:  # re-raised in the handler thread below
                outcome["error"] = error
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name=f"adapt-{request_id}", daemon=True)
        worker.start()
        while (event := events.get()) is not None:
            if event.progress.step in (1, event.progress.total_steps):
                logger.info("request %s: phase %s step %d/%d", request_id, pb.Phase.Name(event.progress.phase), event.progress.step, event.progress.total_steps)
            yield event
        worker.join()
        if "error" in outcome:
            raise outcome["error"]

        result: AdaptationResult = outcome["result"]
        result.timings["validate"] = result.timings.get("validate", 0.0) + decode_seconds
        model = result.onnx_bytes
        for offset in range(0, len(model), CHUNK_BYTES):
            yield pb.AdaptEvent(model_chunk=pb.ModelChunk(offset=offset, data=model[offset : offset + CHUNK_BYTES], total_bytes=len(model)))
        yield pb.AdaptEvent(result=result_proto(result, request_id, self.checkpoint))

    def _serving_config(self, options: pb.AdaptOptions) -> ServingConfig:
        violations = []
        if options.inner_steps > MAX_STEPS:
            violations.append(("options.inner_steps", f"inner_steps is {options.inner_steps}; allowed: 0 (server default) to {MAX_STEPS}"))
        if options.finetune_steps > MAX_STEPS:
            violations.append(("options.finetune_steps", f"finetune_steps is {options.finetune_steps}; allowed: 0 (server default) to {MAX_STEPS}"))
        if violations:
            raise InvalidRequest(violations)
        inner, finetune = self.config.inner, self.config.finetune
        if options.inner_steps:
            inner = dataclasses.replace(inner, inner_steps=options.inner_steps)
        if options.finetune_steps:
            finetune = dataclasses.replace(finetune, steps=options.finetune_steps)
        return dataclasses.replace(self.config, inner=inner, finetune=finetune)


def input_spec_proto(spec: InputSpec) -> pb.InputSpec:
    return pb.InputSpec(channels=spec.channels, height=spec.height, width=spec.width, mean=list(spec.mean), std=list(spec.std))


def result_proto(result: AdaptationResult, request_id: str, checkpoint: Checkpoint) -> pb.AdaptResult:
    space = checkpoint.space
    edge_probabilities = [
        pb.EdgeProbabilities(
            cell_type=cell_type, edge=edge.index, source=edge.source, target=edge.target,
            probabilities=[float(p) for p in result.op_probs[cell_type][edge.index]],
        )
        for cell_type in ("normal", "reduce")
        for edge in space.edges
    ]
    return pb.AdaptResult(
        request_id=request_id,
        genotype_json=result.genotype.to_json(),
        edge_probabilities=edge_probabilities,
        metrics=pb.Metrics(
            support_examples=result.support_examples,
            validation_examples=result.validation_examples,
            validation_accuracy=result.validation_accuracy,
            validation_loss=result.validation_loss,
            onnx_max_abs_diff=result.onnx_max_abs_diff,
        ),
        timings=[pb.PhaseTiming(phase=PHASES[phase], seconds=seconds) for phase, seconds in result.timings.items()],
        parameter_count=result.parameter_count,
        multiply_accumulates=result.multiply_accumulates,
        model_bytes=len(result.onnx_bytes),
        model_sha256=hashlib.sha256(result.onnx_bytes).hexdigest(),
        class_names=result.class_names,
        checkpoint_id=checkpoint.checkpoint_id,
    )
