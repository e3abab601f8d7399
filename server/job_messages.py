"""Validation and conversion of job messages: ids, options, stored datasets and results."""

from __future__ import annotations

import dataclasses
import hashlib
import re

from google.protobuf.message import DecodeError

from archadapt.adaptation import MAX_GENOTYPE_SAMPLES, AdaptationResult, ServingConfig
from archadapt.checkpoint import Checkpoint
from archadapt.cost_model import Budget, CostModel
from archadapt.derivation import check_feasible
from archadapt.errors import BudgetError
from archadapt_client.v1 import archadapt_pb2 as pb
from server.request_decoding import InvalidRequest

MAX_STEPS = 10_000  # upper bound on inner_steps and finetune_steps of a request
PHASES = {
    "validate": pb.PHASE_VALIDATE,
    "adapt": pb.PHASE_ADAPT,
    "derive": pb.PHASE_DERIVE,
    "finetune": pb.PHASE_FINETUNE,
    "evaluate": pb.PHASE_EVALUATE,
    "export": pb.PHASE_EXPORT,
}
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def check_job_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidRequest([("job_id", f"job_id {job_id[:80]!r} is not a job id; job ids are 32 lowercase hex digits")])


def parse_dataset(data: bytes, field: str) -> pb.AdaptRequest:
    """Parse serialized Dataset bytes as an AdaptRequest without options, ready for decode_request."""
    request = pb.AdaptRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as error:
        raise InvalidRequest([(field, f"the {len(data)} bytes are not a serialized archadapt.v1.Dataset message: {error}")]) from None
    request.ClearField("options")
    return request


def check_options(options: pb.AdaptOptions) -> list[tuple[str, str]]:
    violations = []
    if options.inner_steps > MAX_STEPS:
        violations.append(("options.inner_steps", f"inner_steps is {options.inner_steps}; allowed: 0 (server default) to {MAX_STEPS}"))
    if options.finetune_steps > MAX_STEPS:
        violations.append(("options.finetune_steps", f"finetune_steps is {options.finetune_steps}; allowed: 0 (server default) to {MAX_STEPS}"))
    if options.genotype_samples > MAX_GENOTYPE_SAMPLES:
        violations.append((
            "options.genotype_samples",
            f"genotype_samples is {options.genotype_samples}; allowed: 0 (server default) to {MAX_GENOTYPE_SAMPLES}",
        ))
    return violations


def budget(options: pb.AdaptOptions) -> Budget:
    return Budget(max_parameters=options.max_parameters, max_multiply_accumulates=options.max_multiply_accumulates)


def check_budget(options: pb.AdaptOptions, checkpoint: Checkpoint, num_classes: int) -> None:
    """Raise InvalidRequest when no network of the search space for `num_classes` classes fits the budget."""
    limits = budget(options)
    if not limits.is_set:
        return
    try:
        check_feasible(CostModel.build(checkpoint.space, checkpoint.spec, num_classes), limits)
    except BudgetError as error:
        raise InvalidRequest([(f"options.{option}", description) for option, description in error.violations]) from None


def serving_config(config: ServingConfig, options: pb.AdaptOptions) -> ServingConfig:
    """Return `config` with the step counts and genotype samples that the options set."""
    inner, finetune = config.inner, config.finetune
    if options.inner_steps:
        inner = dataclasses.replace(inner, inner_steps=options.inner_steps)
    if options.finetune_steps:
        finetune = dataclasses.replace(finetune, steps=options.finetune_steps)
    samples = options.genotype_samples or config.genotype_samples
    return dataclasses.replace(config, inner=inner, finetune=finetune, genotype_samples=samples)


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
        top_genotypes=[
            pb.RankedGenotype(
                genotype_json=ranked.genotype.to_json(),
                probability=ranked.probability,
                parameter_count=ranked.cost.parameters,
                multiply_accumulates=ranked.cost.multiply_accumulates,
            )
            for ranked in result.top_genotypes
        ],
    )
