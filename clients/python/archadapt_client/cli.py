"""Command-line interface: ``archadapt adapt`` and ``archadapt info``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from archadapt_client import __version__
from archadapt_client.client import AdaptResult, Client, ProgressUpdate
from archadapt_client.errors import ArchadaptError
from archadapt_client.jobs_cli import JOB_COMMANDS, add_job_commands, run_job_command
from archadapt_client.loaders import DatasetError, load_dataset, load_idx
from archadapt_client.v1 import archadapt_pb2

logger = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class PhaseProgressBars:
    """Show one tqdm bar per phase on ``stream``, with step/total and the loss as postfix."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._phase: str | None = None
        self._bar: tqdm | None = None

    def update(self, progress: ProgressUpdate) -> None:
        if progress.phase != self._phase or self._bar is None:
            self.close()
            self._phase = progress.phase
            self._bar = tqdm(
                total=progress.total_steps or None,
                desc=progress.phase,
                unit="step",
                file=self._stream,
                dynamic_ncols=True,
                leave=True,
            )
        bar = self._bar
        if progress.total_steps and bar.total != progress.total_steps:
            bar.total = progress.total_steps
        bar.n = progress.step
        if progress.loss:
            bar.set_postfix(loss=f"{progress.loss:.4f}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archadapt",
        description="Adapt the archadapt server's meta-learned prior to a labeled image dataset "
        "and download the resulting ONNX classifier.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more detail on stderr: -v for INFO, -vv for DEBUG (default: WARNING)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    adapt = commands.add_parser(
        "adapt",
        help="adapt the prior to a dataset and save the ONNX model",
        description="Send a dataset to the server, show the progress of each phase, save the ONNX model "
        "and print its validation accuracy, genotype and phase times.",
    )
    _add_server_arguments(adapt)
    adapt.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="PATH",
        help="dataset: a directory with one sub-folder of PNG/JPEG/BMP/GIF images per class, "
        "an .npz file with 'images', 'labels' and optional 'class_names' arrays, "
        "or an IDX image file together with --labels",
    )
    adapt.add_argument(
        "--labels",
        type=Path,
        metavar="PATH",
        help="IDX label file (plain or gzip) that belongs to the IDX image file given as --data",
    )
    adapt.add_argument(
        "--out", required=True, type=Path, metavar="PATH", help="path of the ONNX model to write, e.g. model.onnx"
    )
    adapt.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=0,
        help="seed of every random choice of the server; the same seed and data give the same model (default: 0)",
    )
    adapt.add_argument(
        "--inner-steps",
        type=int,
        metavar="N",
        default=0,
        help="inner-loop steps that adapt the architecture and weights (default: 0, the server's default)",
    )
    adapt.add_argument(
        "--finetune-steps",
        type=int,
        metavar="N",
        default=0,
        help="fine-tuning steps of the derived network (default: 0, the server's default)",
    )

    predict = commands.add_parser(
        "predict",
        help="classify images with a model returned by archadapt adapt",
        description="Run an archadapt ONNX model with onnxruntime on image files or folders, resizing "
        "them to the model's input spec, and print the most probable classes by name.",
    )
    predict.add_argument("model", type=Path, metavar="MODEL", help="ONNX model written by archadapt adapt")
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of them")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="number of classes printed per image (default: 3)")

    info = commands.add_parser(
        "info",
        help="print the server's input spec, search space, limits and versions",
        description="Print the input spec, search space, request limits and versions of the server.",
    )
    _add_server_arguments(info)
    add_job_commands(commands, _add_server_arguments)
    return parser


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the archadapt server")
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="S",
        help="deadline of the whole call in seconds (default: 600)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}; expected a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}; expected a positive number of seconds")
    return value


def run_adapt(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
    """Load the dataset, run the adaptation with progress bars and report the result."""
    if args.labels is not None:
        dataset = load_idx(args.data, args.labels)
    elif args.data.is_file() and args.data.suffix.lower() != ".npz":
        raise DatasetError(
            f"--data {args.data} is neither a directory nor an .npz file; "
            "for an IDX image file, also pass its label file with --labels"
        )
    else:
        dataset = load_dataset(args.data)
    logger.info("loaded %d images from %s", len(dataset), args.data)

    bars = PhaseProgressBars(stderr)
    try:
        with Client(args.server, timeout=args.timeout) as client:
            result = client.adapt(
                dataset.images,
                dataset.labels,
                dataset.class_names,
                on_progress=bars.update,
                seed=args.seed,
                inner_steps=args.inner_steps,
                finetune_steps=args.finetune_steps,
            )
    finally:
        bars.close()

    path = result.save(args.out)
    print_result(result, path, stdout)


def run_predict(args: argparse.Namespace, stdout: TextIO) -> None:
    """Print the top classes of every image, one line per image."""
    from archadapt_client.predict import Model, image_files

    if args.top < 1:
        raise ValueError(f"--top is {args.top}; use 1 or more")
    model = Model(args.model)
    for prediction in model.predict_files(image_files(args.images), top=args.top):
        classes = ", ".join(f"{name} {100 * probability:.1f}%" for name, probability in prediction.top)
        print(f"{prediction.path}: {classes}", file=stdout)


def print_result(result: AdaptResult, path: Path, stdout: TextIO) -> None:
    """Print the saved model, validation metrics, genotype and phase times."""
    metrics = result.metrics
    lines = [
        f"model: {path} ({len(result.onnx_model)} bytes, sha256 {result.model_sha256})",
        f"request id: {result.request_id}",
        f"checkpoint: {result.checkpoint_id}",
        f"classes: {', '.join(result.class_names)}",
        f"parameters: {result.parameter_count}",
        f"multiply-accumulates per image: {result.multiply_accumulates}",
    ]
    if metrics.validation_examples:
        lines.append(
            f"validation accuracy: {metrics.validation_accuracy:.4f} on {metrics.validation_examples} images "
            f"(loss {metrics.validation_loss:.4f} nats, trained on {metrics.support_examples} images)"
        )
    else:
        lines.append(
            f"validation accuracy: not measured, the dataset was too small to hold out images "
            f"(trained on {metrics.support_examples} images)"
        )
    lines.append(f"ONNX vs PyTorch max abs difference: {metrics.onnx_max_abs_diff:.3g}")

    lines.append("genotype:")
    for cell_type, operations in result.genotype.items():
        lines.append(f"  {cell_type}: {json.dumps(operations)}")

    lines.append("phase times:")
    width = max((len(name) for name in result.timings), default=0)
    for name, seconds in result.timings.items():
        lines.append(f"  {name:<{width}}  {seconds:8.2f} s")
    lines.append(f"  {'total':<{width}}  {sum(result.timings.values()):8.2f} s")
    print("\n".join(lines), file=stdout)


def run_info(args: argparse.Namespace, stdout: TextIO) -> None:
    with Client(args.server, timeout=args.timeout) as client:
        info = client.info()
    print(format_server_info(info), file=stdout)


def format_server_info(info: archadapt_pb2.ServerInfo) -> str:
    """Format a ServerInfo message as indented "name: value" lines."""
    spec = info.input_spec
    space = info.search_space
    limits = info.limits
    lines = [
        f"archadapt version: {info.archadapt_version}",
        f"checkpoint: {info.checkpoint_id}",
        f"device: {info.device}",
        f"torch version: {info.torch_version}",
        f"onnxruntime version: {info.onnxruntime_version}",
        "input spec:",
        f"  shape (C, H, W): ({spec.channels}, {spec.height}, {spec.width})",
        f"  mean: {_format_floats(spec.mean)}",
        f"  std: {_format_floats(spec.std)}",
        "search space:",
        f"  primitives: {', '.join(space.primitives)}",
        f"  intermediate nodes per cell: {space.nodes}",
        f"  cells: {space.cells} (reduction cells at {', '.join(str(i) for i in space.reduce_cells) or 'none'})",
        f"  channels of the first cell: {space.channels}",
        "request limits:",
        f"  images: at most {limits.max_images}",
        f"  classes: {limits.min_classes} to {limits.max_classes}",
        f"  image side: at most {limits.max_image_side} px",
        f"  request size: at most {limits.max_request_bytes} bytes",
        "defaults:",
        f"  inner steps: {info.default_inner_steps}",
        f"  fine-tuning steps: {info.default_finetune_steps}",
    ]
    return "\n".join(lines)


def _format_floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"


def report_error(error: BaseException, stderr: TextIO) -> None:
    """Print ``error: ...`` and, for an ArchadaptError, each field violation on its own line."""
    print(f"error: {error}", file=stderr)
    if isinstance(error, ArchadaptError):
        for field, description in error.field_violations:
            print(f"  {field}: {description}", file=stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status.

    The status is 0 on success, 1 on a failed call or invalid data, and 130
    on Ctrl-C. Invalid arguments make argparse exit with status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    try:
        if args.command == "adapt":
            run_adapt(args, sys.stdout, sys.stderr)
        elif args.command == "predict":
            run_predict(args, sys.stdout)
        elif args.command in JOB_COMMANDS:
            if not run_job_command(args, sys.stdout):
                return EXIT_FAILURE
        else:
            run_info(args, sys.stdout)
    except (ArchadaptError, ValueError, OSError, ImportError) as error:
        # ValueError covers DatasetError and out-of-range options.
        logger.debug("command %s failed", args.command, exc_info=True)
        report_error(error, sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
