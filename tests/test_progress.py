"""Progress reports of the training loops: rate limited, always the last step, and free of
per-step waits for the GPU."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

from archadapt.config import FinetuneConfig, InnerLoopConfig
from archadapt.derivation import derive_genotype
from archadapt.finetune import finetune
from archadapt.inner_loop import Prior, StepReport, run_inner_loop
from archadapt.network import DerivedNetwork
from archadapt.posterior import op_probs
from archadapt.progress import ProgressThrottle
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet

NUM_CLASSES = 3
NEVER_BETWEEN = ProgressThrottle(3600.0)  # only the first and the last step report


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_reports_after_interval() -> None:
    clock = FakeClock()
    throttle = ProgressThrottle(0.25, clock)
    due = []
    for step in range(1, 11):
        due.append(throttle.due(step, 10))
        clock.now += 0.0625  # exact in binary, so the sums hit the interval exactly
    # Reports at t = 0 (first), 0.25 (step 5), 0.5 (step 9) and the last step.
    assert [step for step, report in zip(range(1, 11), due) if report] == [1, 5, 9, 10]


def test_zero_interval_reports_every_step() -> None:
    throttle = ProgressThrottle(0.0, FakeClock())
    assert all(throttle.due(step, 5) for step in range(1, 6))


def test_throttle_rejects_negative_interval() -> None:
    with pytest.raises(ValueError, match="min_interval_seconds is -1"):
        ProgressThrottle(-1.0)


def make_prior(space: SearchSpace, spec: InputSpec, device: str = "cpu") -> tuple[Supernet, Prior]:
    torch.manual_seed(0)
    supernet = Supernet(space, spec).to(device)
    return supernet, Prior.from_supernet(supernet, prior_sigma=0.1)


def make_network(space: SearchSpace, spec: InputSpec, device: str = "cpu") -> DerivedNetwork:
    torch.manual_seed(0)
    supernet = Supernet(space, spec)
    probs = {cell_type: op_probs(getattr(supernet, name)).detach() for cell_type, name in ALPHA_NAMES.items()}
    return DerivedNetwork(space, spec, derive_genotype(space, probs), NUM_CLASSES).to(device)


def test_throttled_inner_loop_reports_ends(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    reports: list[StepReport] = []
    posterior = run_inner_loop(
        supernet, prior, images, labels, NUM_CLASSES, InnerLoopConfig(inner_steps=5),
        generator=torch.Generator().manual_seed(0), on_step=reports.append, throttle=NEVER_BETWEEN,
    )

    assert [report.step for report in reports] == [1, 5]
    assert len(posterior.losses) == 5
    assert all(isinstance(loss, float) for loss in posterior.losses)
    assert [report.loss for report in reports] == [posterior.losses[0], posterior.losses[-1]]


def test_throttled_finetune_reports_ends(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(4)
    reports: list[tuple[int, int, float]] = []
    losses = finetune(
        make_network(tiny_space, tiny_spec), images, labels, FinetuneConfig(steps=6, batch_size=6, ema_decay=0.9),
        torch.Generator().manual_seed(0), on_step=lambda *report: reports.append(report), throttle=NEVER_BETWEEN,
    )

    assert [(step, total) for step, total, _ in reports] == [(1, 6), (6, 6)]
    assert len(losses) == 6
    assert all(isinstance(loss, float) for loss in losses)
    assert [loss for _, _, loss in reports] == [losses[0], losses[-1]]


# -- on a GPU: the number of host waits does not grow with the number of steps ------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def count_host_waits(run: Callable[[], object]) -> int:
    """Run `run` with CUDA's sync debug mode set to warn and count the warnings it raises."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@cuda_only
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_inner_steps_skip_gpu_waits(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable, precision: str) -> None:
    # Soft sampling, because hard sampling reads its sampled primitives on the host at every step.
    images, labels = (t.to("cuda") for t in corner_squares(4))
    supernet, prior = make_prior(tiny_space, tiny_spec, "cuda")

    def adapt(steps: int) -> None:
        config = InnerLoopConfig(inner_steps=steps, sampling="soft", weight_sampling="gaussian", precision=precision)
        run_inner_loop(
            supernet, prior, images, labels, NUM_CLASSES, config, generator=torch.Generator().manual_seed(0),
            on_step=lambda report: None, throttle=NEVER_BETWEEN,
        )

    adapt(2)  # warm-up
    assert count_host_waits(lambda: adapt(8)) == count_host_waits(lambda: adapt(2))


@cuda_only
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_finetune_steps_skip_gpu_waits(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable, precision: str) -> None:
    images, labels = (t.to("cuda") for t in corner_squares(8))

    def tune(steps: int) -> None:
        config = FinetuneConfig(
            steps=steps, batch_size=12, lr_schedule="one_cycle", mixup_alpha=0.4, ema_decay=0.9, precision=precision
        )
        finetune(
            make_network(tiny_space, tiny_spec, "cuda"), images, labels, config, torch.Generator().manual_seed(0),
            on_step=lambda *report: None, throttle=NEVER_BETWEEN,
        )

    tune(2)  # warm-up
    assert count_host_waits(lambda: tune(8)) == count_host_waits(lambda: tune(2))
