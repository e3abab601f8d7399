"""Measure how fast a cancelled job, and a cancelled Adapt call, stops computing.

Usage:
    python benchmarks/cancel_latency.py [--checkpoint DIR] [--repeats N] [--threads N]

An in-process server serves the checkpoint (default: checkpoints/default) and adapts it to the
Fashion-MNIST demo sample. For each target phase the script waits for that phase's progress
event, then cancels: CancelJob for a submitted job, or cancelling the call for Adapt. The latency
runs from the cancel to the CANCELLED event, which the worker writes only after it has stopped
computing. The results are appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from archadapt.adaptation import ServingConfig  # noqa: E402
from archadapt.checkpoint import load_checkpoint  # noqa: E402
from archadapt_client import Client, load_dataset  # noqa: E402
from archadapt_client.client import build_request  # noqa: E402
from archadapt_client.v1 import archadapt_pb2 as pb  # noqa: E402
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc  # noqa: E402
from benchmarks.markdown_report import append_section, current_commit, machine_description  # noqa: E402
from server.app import create_server  # noqa: E402

DATA = REPO_ROOT / "examples" / "fashion-mnist" / "support.npz"
REPORT = REPO_ROOT / "docs" / "benchmarks.md"
PHASE_STEP = {"adapt": 2, "finetune": 2, "export": 0}  # cancel at this step of the phase


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "checkpoints" / "default", help="checkpoint directory")
    parser.add_argument("--repeats", type=int, default=3, help="cancellations per phase and path (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--no-report", action="store_true", help="print the results without appending them to docs/benchmarks.md")
    return parser.parse_args()


def reached(event: pb.JobEvent | pb.AdaptEvent, phase: str) -> bool:
    if event.WhichOneof("event") != "progress":
        return False
    return event.progress.phase == pb.Phase.Value(f"PHASE_{phase.upper()}") and event.progress.step >= PHASE_STEP[phase]


def cancel_job_latency(client: Client, dataset_id: str, phase: str, seed: int) -> float:
    """Submit a job, cancel it with CancelJob in `phase`, and return the seconds until CANCELLED."""
    job = client.submit_job(dataset_id, seed=seed, finetune_steps=10 if phase == "export" else 0)
    events = client.watch_job(job.job_id)
    for event in events:
        if reached(event, phase):
            break
    cancelled_at = time.perf_counter()
    client.cancel_job(job.job_id)
    for event in events:
        if event.WhichOneof("event") == "state_change":
            if event.state_change.state != pb.CANCELLED:
                raise RuntimeError(f"job {job.job_id} ended {pb.JobState.Name(event.state_change.state)}, not CANCELLED")
            return time.perf_counter() - cancelled_at
    raise RuntimeError(f"the watch of job {job.job_id} ended without a final state")


def cancel_adapt_latency(client: Client, request: pb.AdaptRequest, phase: str) -> float:
    """Start an Adapt call, cancel the call in `phase`, and return the seconds until its job is CANCELLED."""
    stub = pb_grpc.AdaptationStub(client._channel)
    call = stub.Adapt(request)
    for event in call:
        if reached(event, phase):
            break
    cancelled_at = time.perf_counter()
    call.cancel()
    job = next(client.list_jobs())  # the Adapt call's job is the newest
    while True:
        job = client.get_job(job.job_id)
        if job.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED):
            break
        time.sleep(0.005)
    if job.state != pb.CANCELLED:
        raise RuntimeError(f"job {job.job_id} ended {pb.JobState.Name(job.state)}, not CANCELLED")
    return time.perf_counter() - cancelled_at


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    dataset = load_dataset(DATA)

    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="archadapt-cancel-") as data_dir:
        server = create_server("127.0.0.1:0", checkpoint, torch.device("cpu"), config=ServingConfig(), data_dir=Path(data_dir))
        try:
            with Client(f"127.0.0.1:{server.port}", timeout=600) as client:
                dataset_id = client.upload_dataset(dataset.images, dataset.labels, dataset.class_names).dataset_id
                for phase in PHASE_STEP:
                    for repeat in range(args.repeats):
                        seconds = cancel_job_latency(client, dataset_id, phase, seed=repeat)
                        results.setdefault(("CancelJob", phase), []).append(seconds)
                        print(f"CancelJob in {phase}: {seconds:.3f} s", flush=True)
                    request = build_request(dataset.images, dataset.labels, dataset.class_names, finetune_steps=10 if phase == "export" else 0)
                    for repeat in range(args.repeats):
                        seconds = cancel_adapt_latency(client, request, phase)
                        results.setdefault(("Adapt call", phase), []).append(seconds)
                        print(f"Adapt call cancelled in {phase}: {seconds:.3f} s", flush=True)
        finally:
            server.stop(grace=1.0)

    commit = current_commit()
    lines = [
        "",
        f"## Cancellation latency, {time.strftime('%Y-%m-%d', time.gmtime())}",
        "",
        f"- Command: `python benchmarks/cancel_latency.py --repeats {args.repeats} --threads {args.threads}`",
        f"- Commit: {commit}; checkpoint `{checkpoint.checkpoint_id}`; device cpu; Fashion-MNIST demo sample (200 images)",
        f"- Machine: {machine_description()}",
        "- Seconds from the cancel (CancelJob, or cancelling the Adapt call) to the job's CANCELLED state,",
        "  which the worker records after it has stopped computing.",
        "",
        "| path | phase | mean | max | runs |",
        "|---|---|---|---|---|",
    ]
    for (path, phase), values in results.items():
        lines.append(f"| {path} | {phase} | {statistics.mean(values):.3f} | {max(values):.3f} | {len(values)} |")
    print("\n".join(lines))
    if not args.no_report:
        append_section(REPORT, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
