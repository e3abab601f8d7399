"""Command-line interface: ``archadapt adapt``, ``info``, ``predict`` and ``show``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from tqdm import tqdm

from archadapt_client import __version__
from archadapt_client.client import AdaptResult, Client, ProgressUpdate, RetryPolicy
from archadapt_client.errors import ArchadaptError
from archadapt_client.jobs_cli import (
    JOB_COMMANDS,
    add_budget_arguments,
    add_job_commands,
    non_negative_int,
    run_job_command,
)
from archadapt_client.loaders import DatasetError, load_dataset, load_idx
from archadapt_client.v1 import archadapt_pb2

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_UNAUTHENTICATED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_FAILURE}    the command failed: the server rejected or failed the call, or a local file,
       dataset or option is invalid
  {EXIT_USAGE}    invalid command-line arguments
  {EXIT_UNAVAILABLE}    the server could not be reached or the deadline passed (UNAVAILABLE or
       DEADLINE_EXCEEDED, after the retries)
  {EXIT_UNAUTHENTICATED}    the server rejected the credentials (UNAUTHENTICATED or PERMISSION_DENIED)
  {EXIT_INTERRUPTED}  interrupted with Ctrl-C

environment:
  ARCHADAPT_TOKEN  bearer token sent when --token-file is not given"""

TOKEN_ENVIRONMENT_VARIABLE = "ARCHADAPT_TOKEN"
PREDICT_BATCH_SIZE = 256


class HelpFormatter(argparse.HelpFormatter):
    """Wrap descriptions as usual, but keep the line breaks of the exit-code table in the epilog."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text == EXIT_CODES_HELP:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class PhaseProgressBars:
    """Show one tqdm bar per phase on ``stream``, with step/total and the loss as postfix."""

    def __init__(self, stream: TextIO, disable: bool = False) -> None:
        self._stream = stream
        self._disable = disable
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
                disable=self._disable,
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
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more detail on stderr: -v for INFO, -vv for DEBUG (default: WARNING)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw progress bars on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    adapt = commands.add_parser(
        "adapt",
        help="adapt the prior to a dataset and save the ONNX model",
        description="Send a dataset to the server, show the progress of each phase, save the ONNX model "
        "and print its validation accuracy, genotype and phase times.",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
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
    add_budget_arguments(adapt)
    adapt.add_argument(
        "--triton-repo",
        type=Path,
        metavar="DIR",
        help="also write the model into this Triton model repository: DIR/NAME/config.pbtxt, "
        "DIR/NAME/labels.txt and DIR/NAME/1/model.onnx",
    )
    adapt.add_argument(
        "--triton-name",
        metavar="NAME",
        help="model name in the Triton repository (default: the file name of --out without .onnx)",
    )
    adapt.add_argument(
        "--triton-max-batch-size",
        type=int,
        default=64,
        metavar="N",
        help="max_batch_size of the Triton config (default: 64)",
    )
    _add_json_argument(adapt)

    predict = commands.add_parser(
        "predict",
        help="classify images with a model returned by archadapt adapt",
        description="Run an archadapt ONNX model with onnxruntime on image files or folders, resizing "
        "them to the model's input spec, and print the most probable classes by name.",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    predict.add_argument("model", type=Path, metavar="MODEL", help="ONNX model written by archadapt adapt")
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders of them")
    predict.add_argument("--top", type=int, default=3, metavar="K", help="number of classes printed per image (default: 3)")
    _add_json_argument(predict)

    info = commands.add_parser(
        "info",
        help="print the server's input spec, search space, limits and versions",
        description="Print the input spec, search space, request limits and versions of the server.",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    _add_server_arguments(info)
    _add_json_argument(info)

    show = commands.add_parser(
        "show",
        help="draw the normal and reduce cells of a genotype",
        description="Read the genotype from an ONNX model returned by archadapt adapt, from the output of "
        "'archadapt adapt --json', or from a genotype JSON file. Print one line per node, and with --out "
        "draw both cells as an SVG or PNG diagram (needs the graphviz package and Graphviz's dot program).",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    show.add_argument("source", type=Path, metavar="RESULT_JSON_OR_MODEL", help="an .onnx model or a .json file")
    show.add_argument("--out", type=Path, metavar="PATH", help="diagram to write, ending in .svg or .png")
    _add_json_argument(show)

    def add_job_arguments(command: argparse.ArgumentParser) -> None:
        _add_server_arguments(command)
        _add_json_argument(command)

    add_job_commands(commands, add_job_arguments, EXIT_CODES_HELP, HelpFormatter)
    return parser


def _add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout instead of text, also for errors (progress bars stay on stderr)",
    )


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the archadapt server")
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="S",
        help="deadline of the whole call in seconds, retries included (default: 600)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="retries, with exponential backoff, of a call that fails with UNAVAILABLE before it receives "
        "any data (default: 3)",
    )
    security = parser.add_argument_group("security (default: plaintext without a token)")
    security.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server with the system's CAs")
    security.add_argument("--tls-ca", type=Path, metavar="PEM", help="connect with TLS, verifying the server with this CA bundle")
    security.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate for a server that requires mutual TLS")
    security.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    security.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"file whose first line is the bearer token to send (default: ${TOKEN_ENVIRONMENT_VARIABLE} when set)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}; expected a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}; expected a positive number of seconds")
    return value


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        lines = args.token_file.read_text(encoding="utf-8").split("\n")
        token: str = lines[0].strip()
        if not token:
            raise ValueError(f"the first line of --token-file {args.token_file} is empty; write the token there")
        return token
    return os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None


def open_client(args: argparse.Namespace) -> Client:
    """Create the Client that the server, timeout, retry, TLS and token options select."""
    return Client(
        args.server,
        timeout=args.timeout,
        retry=RetryPolicy(max_attempts=args.retries + 1),
        tls=True if args.tls else None,
        root_certificates=args.tls_ca,
        certificate_chain=args.tls_cert,
        private_key=args.tls_key,
        token=_read_token(args),
    )


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
        with tqdm(desc="load", unit="image", file=stderr, disable=args.no_progress, leave=False) as bar:

            def show_loaded(loaded: int, total: int) -> None:
                bar.total = total
                bar.update(loaded - bar.n)

            dataset = load_dataset(args.data, on_image=show_loaded)
    logger.info("loaded %d images from %s", len(dataset), args.data)
    triton_name = args.triton_name or args.out.stem
    if args.triton_repo is not None:
        # Check the name before the long adaptation rather than after it.
        from archadapt_client.triton import check_model_name

        check_model_name(triton_name)

    bars = PhaseProgressBars(stderr, disable=args.no_progress)
    try:
        with open_client(args) as client:
            result = client.adapt(
                dataset.images,
                dataset.labels,
                dataset.class_names,
                on_progress=bars.update,
                seed=args.seed,
                inner_steps=args.inner_steps,
                finetune_steps=args.finetune_steps,
                max_parameters=args.max_parameters,
                max_multiply_accumulates=args.max_macs,
                genotype_samples=args.genotype_samples,
            )
    finally:
        bars.close()

    path = result.save(args.out)
    triton_entry = None
    if args.triton_repo is not None:
        from archadapt_client.triton import write_triton_model

        triton_entry = write_triton_model(
            result.onnx_model, args.triton_repo, triton_name, max_batch_size=args.triton_max_batch_size
        )
    if args.json:
        document = result_document(result, path)
        document["triton_model"] = str(triton_entry) if triton_entry is not None else None
        _print_json(document, stdout)
        return
    print_result(result, path, stdout)
    if triton_entry is not None:
        print(f"Triton model: {triton_entry}", file=stdout)


def result_document(result: AdaptResult, path: Path) -> dict[str, Any]:
    """Return the result as a JSON-ready dict; ``archadapt show`` reads its "genotype" key."""
    return {
        "model": str(path),
        "model_bytes": len(result.onnx_model),
        "model_sha256": result.model_sha256,
        "request_id": result.request_id,
        "checkpoint_id": result.checkpoint_id,
        "class_names": result.class_names,
        "parameter_count": result.parameter_count,
        "multiply_accumulates": result.multiply_accumulates,
        "metrics": dataclasses.asdict(result.metrics),
        "genotype": result.genotype,
        "timings": result.timings,
        "edge_probabilities": [dataclasses.asdict(edge) for edge in result.edge_probabilities],
        "top_genotypes": [dataclasses.asdict(ranked) for ranked in result.top_genotypes],
    }


def _print_json(document: Any, stdout: TextIO) -> None:
    print(json.dumps(document, indent=2), file=stdout)


def run_predict(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
    """Print the top classes of every image, one line per image, with a progress bar over the batches."""
    from archadapt_client.predict import Model, image_files

    if args.top < 1:
        raise ValueError(f"--top is {args.top}; use 1 or more")
    model = Model(args.model)
    files = image_files(args.images)
    predictions = []
    with tqdm(total=len(files), desc="predict", unit="image", file=stderr, disable=args.no_progress) as bar:
        for start in range(0, len(files), PREDICT_BATCH_SIZE):
            batch = files[start : start + PREDICT_BATCH_SIZE]
            predictions.extend(model.predict_files(batch, top=args.top))
            bar.update(len(batch))
    if args.json:
        _print_json(
            [
                {
                    "path": str(prediction.path),
                    "top": [{"class_name": name, "probability": probability} for name, probability in prediction.top],
                }
                for prediction in predictions
            ],
            stdout,
        )
        return
    for prediction in predictions:
        classes = ", ".join(f"{name} {100 * probability:.1f}%" for name, probability in prediction.top)
        print(f"{prediction.path}: {classes}", file=stdout)


def run_show(args: argparse.Namespace, stdout: TextIO) -> None:
    """Print the genotype's nodes and, with --out, draw its cells."""
    from archadapt_client.genotype_diagram import describe_genotype, load_genotype, render_genotype

    genotype = load_genotype(args.source)
    written = render_genotype(genotype, args.out) if args.out is not None else None
    description = describe_genotype(genotype)
    if args.json:
        _print_json(
            {
                "source": str(args.source),
                "genotype": genotype,
                "nodes": description.splitlines(),
                "diagram": str(written) if written is not None else None,
            },
            stdout,
        )
        return
    print(description, file=stdout)
    if written is not None:
        print(f"diagram: {written}", file=stdout)


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

    if result.top_genotypes:
        lines.append("most probable genotypes under the posterior:")
        for rank, ranked in enumerate(result.top_genotypes, start=1):
            lines.append(
                f"  {rank}. probability {ranked.probability:.3g}, {ranked.parameter_count} parameters, "
                f"{ranked.multiply_accumulates} multiply-accumulates"
            )
            for cell_type, operations in ranked.genotype.items():
                lines.append(f"     {cell_type}: {json.dumps(operations)}")

    lines.append("phase times:")
    width = max((len(name) for name in result.timings), default=0)
    for name, seconds in result.timings.items():
        lines.append(f"  {name:<{width}}  {seconds:8.2f} s")
    lines.append(f"  {'total':<{width}}  {sum(result.timings.values()):8.2f} s")
    print("\n".join(lines), file=stdout)


def run_info(args: argparse.Namespace, stdout: TextIO) -> None:
    with open_client(args) as client:
        info = client.info()
    if args.json:
        _print_json(
            json_format.MessageToDict(
                info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            stdout,
        )
        return
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
        f"  samples none: {'no' if space.never_sample_none else 'yes'}",
        f"  ReLU before pooling: {'yes' if space.final_relu else 'no'}",
        f"  two inputs per node in samples: {'yes' if space.sample_two_inputs else 'no'}",
        f"  reduction cells double the channels: {'no' if space.constant_channels else 'yes'}",
        "request limits:",
        f"  images: at most {limits.max_images}",
        f"  classes: {limits.min_classes} to {limits.max_classes}",
        f"  image side: at most {limits.max_image_side} px",
        f"  request size: at most {limits.max_request_bytes} bytes",
        "defaults:",
        f"  inner steps: {info.default_inner_steps}",
        f"  fine-tuning steps: {info.default_finetune_steps}",
        f"  genotype samples: {info.default_genotype_samples}",
    ]
    return "\n".join(lines)


def _format_floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"


def exit_code_for(error: BaseException) -> int:
    """Return the exit status of a command that failed with ``error`` (see EXIT_CODES_HELP)."""
    if isinstance(error, ArchadaptError):
        if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return EXIT_UNAVAILABLE
        if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return EXIT_UNAUTHENTICATED
    return EXIT_FAILURE


def report_error(error: BaseException, stderr: TextIO) -> None:
    """Print ``error: ...`` and, for an ArchadaptError, each field violation on its own line."""
    print(f"error: {error}", file=stderr)
    if isinstance(error, ArchadaptError):
        for field, description in error.field_violations:
            print(f"  {field}: {description}", file=stderr)


def error_document(error: BaseException, exit_code: int) -> dict[str, Any]:
    """Return the JSON object that --json prints on stdout for a failed command."""
    if isinstance(error, ArchadaptError):
        details: dict[str, Any] = {
            "code": error.code_name,
            "message": error.message,
            "field_violations": [{"field": field, "description": text} for field, text in error.field_violations],
        }
    else:
        details = {"code": type(error).__name__, "message": str(error), "field_violations": []}
    return {"error": details, "exit_code": exit_code}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (listed in EXIT_CODES_HELP).

    Invalid arguments make argparse exit with status 2.
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
            run_predict(args, sys.stdout, sys.stderr)
        elif args.command == "show":
            run_show(args, sys.stdout)
        elif args.command in JOB_COMMANDS:
            if not run_job_command(args, open_client, sys.stdout, sys.stderr):
                return EXIT_FAILURE
        else:
            run_info(args, sys.stdout)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler below, not at exit
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly, and keep Python's exit
        # handler from failing again when it flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except (ArchadaptError, ValueError, OSError, ImportError) as error:
        # ValueError covers DatasetError, TritonExportError, GenotypeError and out-of-range options.
        logger.debug("command %s failed", args.command, exc_info=True)
        exit_code = exit_code_for(error)
        report_error(error, sys.stderr)
        if args.json:
            _print_json(error_document(error, exit_code), sys.stdout)
        return exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
