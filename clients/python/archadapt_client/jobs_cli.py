"""Job commands of the command line: submit, status, watch, cancel, download and jobs.

Each command prints its main result as its last line of standard output (the job id for
submit, the job state for status, watch and cancel), so scripts can read it with ``tail -n 1``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from google.protobuf import json_format
from tqdm import tqdm

from archadapt_client.client import Client, phase_name
from archadapt_client.loaders import DatasetError, load_dataset, load_idx
from archadapt_client.v1 import archadapt_pb2

logger = logging.getLogger(__name__)

JOB_COMMANDS = ("submit", "status", "watch", "cancel", "download", "jobs")
_STATE_NAMES = [name for name in archadapt_pb2.JobState.keys() if name != "JOB_STATE_UNSPECIFIED"]


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --max-parameters, --max-macs and --genotype-samples, the options that shape the derived network."""
    parser.add_argument(
        "--max-parameters",
        type=non_negative_int,
        metavar="N",
        default=0,
        help="maximum trainable parameters of the returned network; the server rejects the request at once "
        "when no network of its search space is that small (default: 0, no limit)",
    )
    parser.add_argument(
        "--max-macs",
        type=non_negative_int,
        metavar="N",
        default=0,
        help="maximum multiply-accumulates of the returned network per image (default: 0, no limit)",
    )
    parser.add_argument(
        "--genotype-samples",
        type=non_negative_int,
        metavar="K",
        default=0,
        help="genotypes the server scores on the validation images before it keeps one: the most probable "
        "and K - 1 draws from the posterior (default: 0, the server's default)",
    )


def non_negative_int(text: str) -> int:
    """Parse a count option: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}; expected a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}; expected 0 or more")
    return value


def add_job_commands(
    commands: argparse._SubParsersAction,
    add_server_arguments: Callable[[argparse.ArgumentParser], None],
    epilog: str | None = None,
    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter,
) -> None:
    """Add the job commands to the ``archadapt`` sub-command parser.

    ``add_server_arguments`` adds the connection options (and ``--json``) to each command;
    ``epilog`` and ``formatter_class`` are those of the other commands.
    """
    original_add_parser = commands.add_parser

    def add_parser(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return original_add_parser(name, epilog=epilog, formatter_class=formatter_class, **kwargs)

    submit = add_parser(
        "submit",
        help="upload a dataset and queue an adaptation job; print the job id",
        description="Upload a dataset in chunks (any size up to the server's max_dataset_bytes), queue an "
        "adaptation job on it and print the job id as the last line. The job keeps running after this "
        "command exits; follow it with archadapt watch and fetch the model with archadapt download.",
    )
    add_server_arguments(submit)
    submit.add_argument("--data", required=True, type=Path, metavar="PATH", help="folder of class folders, .npz file, or IDX image file")
    submit.add_argument("--labels", type=Path, metavar="PATH", help="IDX label file, when --data is an IDX image file")
    submit.add_argument("--seed", type=int, default=0, metavar="N", help="seed of every random choice of the server (default: 0)")
    submit.add_argument("--inner-steps", type=int, default=0, metavar="N", help="inner-loop steps (default: 0, the server's default)")
    submit.add_argument("--finetune-steps", type=int, default=0, metavar="N", help="fine-tuning steps (default: 0, the server's default)")
    add_budget_arguments(submit)
    submit.add_argument(
        "--idempotency-key", metavar="KEY",
        help="key that makes a repeated submit return the same job, at most 128 characters (default: a random key, "
        "so that the command's own retries never queue a job twice)",
    )
    submit.add_argument("--deadline", type=float, default=0.0, metavar="S", help="seconds the job may take from submission; 0 for none (default: 0)")

    status = add_parser("status", help="print a job's details and, last, its state", description="Print a job's details; the last line is its state.")
    add_server_arguments(status)
    status.add_argument("job_id", metavar="JOB", help="job id printed by archadapt submit")

    watch = add_parser(
        "watch",
        help="print a job's events until it finishes",
        description="Print a job's events, one per line, until the job reaches a final state, then print the state "
        "as the last line. The watch reattaches by itself after a lost connection or a server restart, "
        "waiting up to 75 s in all. "
        "The exit status is 0 when the job SUCCEEDED and 1 otherwise.",
    )
    add_server_arguments(watch)
    watch.add_argument("job_id", metavar="JOB", help="job id printed by archadapt submit")
    watch.add_argument("--from-index", type=int, default=0, metavar="N", help="index of the first event to print (default: 0, the whole history)")

    cancel = add_parser("cancel", help="cancel a job; print its state", description="Cancel a queued or running job and print its state as the last line.")
    add_server_arguments(cancel)
    cancel.add_argument("job_id", metavar="JOB", help="job id printed by archadapt submit")

    download = add_parser(
        "download", help="save the ONNX model of a finished job",
        description="Download the ONNX model of a SUCCEEDED job in chunks, check its SHA-256 and save it.",
    )
    add_server_arguments(download)
    download.add_argument("job_id", metavar="JOB", help="job id printed by archadapt submit")
    download.add_argument("--out", required=True, type=Path, metavar="PATH", help="path of the ONNX model to write, e.g. model.onnx")

    jobs = add_parser("jobs", help="list jobs, newest first", description="List the server's jobs, newest first, one per line.")
    add_server_arguments(jobs)
    jobs.add_argument("--state", action="append", choices=_STATE_NAMES, metavar="STATE", help=f"list only jobs in this state; repeat for several ({', '.join(_STATE_NAMES)})")
    jobs.add_argument("--limit", type=int, default=50, metavar="N", help="print at most N jobs (default: 50)")


def byte_bar(description: str, args: argparse.Namespace, stderr: TextIO) -> tuple[tqdm, Callable[[int, int], None]]:
    """Return a tqdm bar of bytes on stderr and the (done, total) callback that advances it."""
    bar = tqdm(desc=description, unit="B", unit_scale=True, file=stderr, disable=args.no_progress, leave=False)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, advance


def run_job_command(
    args: argparse.Namespace, open_client: Callable[[argparse.Namespace], Client], stdout: TextIO, stderr: TextIO
) -> bool:
    """Run a job command and return whether it succeeded; ``watch`` fails when the job did not succeed.

    ``open_client`` builds the Client from the connection options. With ``--json`` each
    command prints JSON objects instead of text: one per line for ``watch``, the last one the job.
    """
    with open_client(args) as client:
        if args.command == "submit":
            return run_submit(client, args, stdout, stderr)
        if args.command == "status":
            job = client.get_job(args.job_id)
            if args.json:
                _print_json(_job_document(job), stdout)
            else:
                print_job(job, stdout)
            return True
        if args.command == "watch":
            return run_watch(client, args, stdout)
        if args.command == "cancel":
            job = client.cancel_job(args.job_id)
            if args.json:
                _print_json(_job_document(job), stdout)
            else:
                print(archadapt_pb2.JobState.Name(job.state), file=stdout)
            return True
        if args.command == "download":
            bar, advance = byte_bar("download", args, stderr)
            with bar:
                model = client.download_model(args.job_id, args.out, on_bytes=advance)
            if args.json:
                _print_json({"model": str(args.out), "bytes": len(model)}, stdout)
            else:
                print(f"model: {args.out} ({len(model)} bytes)", file=stdout)
            return True
        return run_list(client, args, stdout)


def _job_document(message: archadapt_pb2.Job | archadapt_pb2.JobEvent) -> dict[str, object]:
    document: dict[str, object] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return document


def _print_json(document: object, stdout: TextIO) -> None:
    print(json.dumps(document, separators=(",", ":")), file=stdout, flush=True)


def run_submit(client: Client, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> bool:
    if args.labels is not None:
        dataset = load_idx(args.data, args.labels)
    elif args.data.is_file() and args.data.suffix.lower() != ".npz":
        raise DatasetError(f"--data {args.data} is neither a directory nor an .npz file; for an IDX image file, also pass --labels")
    else:
        with tqdm(desc="load", unit="image", file=stderr, disable=args.no_progress, leave=False) as bar:

            def show_loaded(loaded: int, total: int) -> None:
                bar.total = total
                bar.update(loaded - bar.n)

            dataset = load_dataset(args.data, on_image=show_loaded)
    bar, advance = byte_bar("upload", args, stderr)
    with bar:
        info = client.upload_dataset(dataset.images, dataset.labels, dataset.class_names, on_bytes=advance)
    if not args.json:
        print(f"dataset: {info.dataset_id} ({info.size_bytes} bytes, {info.images} images, {info.classes} classes)", file=stdout)
    job = client.submit_job(
        info.dataset_id, seed=args.seed, inner_steps=args.inner_steps, finetune_steps=args.finetune_steps,
        max_parameters=args.max_parameters, max_multiply_accumulates=args.max_macs, genotype_samples=args.genotype_samples,
        idempotency_key=args.idempotency_key or uuid.uuid4().hex, deadline_seconds=args.deadline,
    )
    if args.json:
        _print_json({"dataset": json_format.MessageToDict(info, preserving_proto_field_name=True), "job": _job_document(job)}, stdout)
    else:
        print(job.job_id, file=stdout)
    return True


def run_watch(client: Client, args: argparse.Namespace, stdout: TextIO) -> bool:
    if args.from_index < 0:
        raise ValueError(f"--from-index is {args.from_index}; use 0 or more")
    for event in client.watch_job(args.job_id, from_index=args.from_index):
        if args.json:
            _print_json(_job_document(event), stdout)
        else:
            print(format_event(event), file=stdout, flush=True)
    job = client.get_job(args.job_id)
    if args.json:
        _print_json(_job_document(job), stdout)
    else:
        print(archadapt_pb2.JobState.Name(job.state), file=stdout)
    return job.state == archadapt_pb2.SUCCEEDED


def run_list(client: Client, args: argparse.Namespace, stdout: TextIO) -> bool:
    if args.limit < 1:
        raise ValueError(f"--limit is {args.limit}; use 1 or more")
    states = [archadapt_pb2.JobState.Value(name) for name in args.state or []]
    for count, job in enumerate(client.list_jobs(states=states, page_size=min(args.limit, 1000))):
        if count == args.limit:
            break
        if args.json:
            _print_json(_job_document(job), stdout)
        else:
            print(f"{job.job_id}  {archadapt_pb2.JobState.Name(job.state):<9}  {_time(job.created_time)}  attempts {job.attempts}", file=stdout)
    return True


def format_event(event: archadapt_pb2.JobEvent) -> str:
    """Format one job event as ``<index> <time> <what happened>``."""
    prefix = f"{event.index:5d} {_time(event.time)}"
    if event.WhichOneof("event") == "state_change":
        change = event.state_change
        text = f"{prefix} {archadapt_pb2.JobState.Name(change.state)} ({change.reason})"
        if change.error.message:
            text += f": {change.error.message}"
        return text
    progress = event.progress
    loss = f" loss {progress.loss:.4f}" if progress.loss else ""
    return f"{prefix} {phase_name(progress.phase)} {progress.step}/{progress.total_steps}{loss}"


def print_job(job: archadapt_pb2.Job, stdout: TextIO) -> None:
    """Print the job's fields, then its state as the last line."""
    lines = [
        f"job: {job.job_id}",
        f"dataset: {job.dataset_id}",
        f"options: seed {job.options.seed}, inner steps {job.options.inner_steps or 'default'}, "
        f"fine-tuning steps {job.options.finetune_steps or 'default'}"
        + (f", at most {job.options.max_parameters} parameters" if job.options.max_parameters else "")
        + (f", at most {job.options.max_multiply_accumulates} multiply-accumulates" if job.options.max_multiply_accumulates else "")
        + (f", {job.options.genotype_samples} genotype samples" if job.options.genotype_samples else ""),
        f"created: {_time(job.created_time)}",
        f"started: {_time(job.started_time)}",
        f"finished: {_time(job.finished_time)}",
        f"attempts: {job.attempts}",
        f"events: {job.event_count}",
    ]
    if job.state == archadapt_pb2.QUEUED:
        lines.append(f"queue position: {job.queue_position}")
    if job.expire_time:
        lines.append(f"expires: {_time(job.expire_time)}")
    if job.HasField("error"):
        lines.append(f"error: {job.error.message}")
    if job.HasField("result"):
        result = job.result
        lines.append(f"model: {result.model_bytes} bytes, sha256 {result.model_sha256}")
        lines.append(f"validation accuracy: {result.metrics.validation_accuracy:.4f} on {result.metrics.validation_examples} images")
    lines.append(archadapt_pb2.JobState.Name(job.state))
    print("\n".join(lines), file=stdout)


def _time(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
