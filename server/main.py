"""Command line of the server: `archadapt-server --port P [--checkpoint DIR]`."""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait slow PyTorch down when another process competes for
# the cores: 10 fine-tuning steps took 13.8 s spinning and 11.2 s passive, with two threads beside
# a busy process on a 2-core machine. It must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import onnxruntime
import torch

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import load_checkpoint
from archadapt.config import PRECISIONS
from archadapt.errors import CheckpointError, ConfigError
from server.app import create_server
from server.concurrency import MAX_AUTO_CONCURRENT_JOBS, concurrent_jobs_argument, resolve_concurrent_jobs
from server.jobs import JobLimits
from server.providers import loaded_providers
from server.request_decoding import RequestLimits
from server.security import SecurityConfigError, add_security_arguments, describe, security_from_args

logger = logging.getLogger("server")

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="archadapt-server", description="Serve the archadapt gRPC Adaptation service.")
    parser.add_argument("--port", type=int, default=50051, help="TCP port to listen on; 0 picks a free port (default: 50051)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; use 0.0.0.0 to accept remote clients)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help=f"checkpoint directory (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--device", default="auto", help="torch device for adaptation: auto (cuda when available, else cpu), cpu or cuda[:N]")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file once the server is ready")
    parser.add_argument("--data-dir", type=Path, default=Path("archadapt-data"), help="directory of the job database, datasets and models; a restart on the same directory resumes its jobs (default: ./archadapt-data)")
    parser.add_argument("--max-images", type=int, default=RequestLimits.max_images, help=f"maximum number of images in one dataset (default: {RequestLimits.max_images})")
    parser.add_argument("--max-classes", type=int, default=RequestLimits.max_classes, help=f"maximum number of classes in one dataset (default: {RequestLimits.max_classes})")
    parser.add_argument("--max-image-side", type=int, default=RequestLimits.max_image_side, help=f"largest image height or width in pixels (default: {RequestLimits.max_image_side})")
    parser.add_argument("--max-image-pixels", type=int, default=RequestLimits.max_image_pixels, help=f"largest image area, height times width, in pixels (default: {RequestLimits.max_image_pixels})")
    parser.add_argument("--max-request-bytes", type=int, default=RequestLimits.max_request_bytes, help=f"largest gRPC message in bytes, so the largest Adapt or inline SubmitJob dataset (default: {RequestLimits.max_request_bytes})")
    parser.add_argument("--max-dataset-bytes", type=int, default=RequestLimits.max_dataset_bytes, help=f"largest dataset in bytes accepted by UploadDataset (default: {RequestLimits.max_dataset_bytes})")
    parser.add_argument("--max-queue", type=int, default=JobLimits.max_queued_jobs, help=f"maximum number of jobs waiting in the queue; a submit beyond it gets RESOURCE_EXHAUSTED (default: {JobLimits.max_queued_jobs})")
    parser.add_argument("--max-concurrent-jobs", type=concurrent_jobs_argument, default=JobLimits.max_concurrent_jobs, help=f"maximum number of jobs running at once, or auto: on CUDA as many as fit in free GPU memory (up to {MAX_AUTO_CONCURRENT_JOBS}), on a CPU one (default: {JobLimits.max_concurrent_jobs})")
    parser.add_argument("--job-memory-mib", type=float, default=0.0, help="GPU memory of one job at its peak, in MiB, for --max-concurrent-jobs auto; 0 measures it with a short job at start (default: 0)")
    parser.add_argument("--result-ttl", type=float, default=JobLimits.result_ttl_seconds, help=f"seconds a finished job and its model are kept; 0 keeps them forever (default: {JobLimits.result_ttl_seconds:.0f}, 7 days)")
    parser.add_argument("--max-disk-bytes", type=int, default=JobLimits.max_disk_bytes, help="maximum number of bytes in the data directory; uploads and submits that would pass it get RESOURCE_EXHAUSTED (default: 0, no limit)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics over HTTP at /metrics on this port of --host; 0 picks a free port (default: no metrics)")
    parser.add_argument("--metrics-port-file", type=Path, help="write the bound metrics port to this file once the server is ready")
    parser.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds that open calls get to finish after SIGTERM or SIGINT (default: 5)")
    parser.add_argument("--grpc-threads", type=int, default=32, help="gRPC worker threads; each open Adapt or WatchJob stream uses one (default: 32)")
    parser.add_argument("--progress-interval", type=float, default=ServingConfig.progress_interval_seconds, help=f"seconds between two progress events of the adapt and finetune phases, whose first and last steps always report; each event waits for the GPU, 0 reports every step (default: {ServingConfig.progress_interval_seconds})")
    parser.add_argument("--precision", default="float32", choices=list(PRECISIONS), help="numeric precision of the inner loop and fine-tuning: float32, or bfloat16 autocast with float32 weights; the ONNX model is float32 either way (default: float32)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads for adaptation (0: torch's default, one per core)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    add_security_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads < 0:
        parser_error = f"--threads is {args.threads}; use 0 for torch's default or a positive count"
        logger.error(parser_error)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            logger.error("--device is %r; use auto, cpu, cuda or cuda:N", args.device)
            return 2
        if device.type == "cuda" and not torch.cuda.is_available():
            logger.error("--device is %s but this torch build sees no CUDA device; use --device cpu or auto", args.device)
            return 2
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            logger.error(
                "--device is %s but only %d CUDA device(s) are visible; use cuda:0 to cuda:%d",
                args.device, torch.cuda.device_count(), torch.cuda.device_count() - 1,
            )
            return 2
        if device.type not in ("cpu", "cuda"):
            logger.error("--device is %s; use auto, cpu, cuda or cuda:N", args.device)
            return 2
    try:
        config = ServingConfig(progress_interval_seconds=args.progress_interval).with_precision(args.precision)
    except ConfigError as error:
        logger.error("invalid --progress-interval: %s", error)
        return 2
    if args.precision == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.error("--precision bfloat16 needs a GPU with bfloat16 support, which %s lacks; use --precision float32", device)
        return 2
    try:
        checkpoint = load_checkpoint(args.checkpoint, device="cpu")
        checkpoint.check_supernet()
    except CheckpointError as error:
        logger.error("cannot load checkpoint: %s", error)
        return 2

    try:
        security = security_from_args(args)
    except SecurityConfigError as error:
        logger.error("invalid security options: %s", error)
        return 2

    try:
        limits = RequestLimits(
            max_images=args.max_images, max_classes=args.max_classes, max_image_side=args.max_image_side,
            max_image_pixels=args.max_image_pixels, max_request_bytes=args.max_request_bytes,
            max_dataset_bytes=args.max_dataset_bytes,
        )
    except ValueError as error:
        logger.error("invalid limit: %s", error)
        return 2
    if args.job_memory_mib < 0:
        logger.error("--job-memory-mib is %s; use 0 to measure it at start or a positive size in MiB", args.job_memory_mib)
        return 2
    concurrent_jobs = resolve_concurrent_jobs(args.max_concurrent_jobs, device, checkpoint, config, limits, args.job_memory_mib)
    try:
        job_limits = JobLimits(
            max_queued_jobs=args.max_queue, max_concurrent_jobs=concurrent_jobs,
            result_ttl_seconds=args.result_ttl, max_disk_bytes=args.max_disk_bytes,
        )
    except ValueError as error:
        logger.error("invalid limit: %s", error)
        return 2
    metrics_address = (args.host, args.metrics_port) if args.metrics_port is not None else None
    running = create_server(
        f"{args.host}:{args.port}", checkpoint, device, limits, config, max_workers=args.grpc_threads,
        security=security, data_dir=args.data_dir, job_limits=job_limits, metrics_address=metrics_address,
    )
    logger.info(
        "serving checkpoint %s from %s on %s:%d; device %s (%d CPU threads, %s); "
        "onnxruntime %s providers %s loaded of %s available",
        checkpoint.checkpoint_id, args.checkpoint, args.host, running.port, device, torch.get_num_threads(), args.precision,
        onnxruntime.__version__, loaded_providers(), onnxruntime.get_available_providers(),
    )
    logger.info("connections: %s", describe(security, args))
    logger.info("data directory %s; job limits %s", args.data_dir.resolve(), job_limits)
    if running.metrics_port is not None:
        logger.info("serving Prometheus metrics on http://%s:%d/metrics", args.host, running.metrics_port)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stopped.set())
    if args.port_file:
        write_port_file(args.port_file, running.port)
    if args.metrics_port_file and running.metrics_port is not None:
        write_port_file(args.metrics_port_file, running.metrics_port)
    stopped.wait()
    logger.info("shutting down: health NOT_SERVING, no new work, running jobs stay queued for the next start")
    running.stop(grace=args.shutdown_grace)
    logger.info("stopped")
    return 0


def write_port_file(path: Path, port: int) -> None:
    """Write the port atomically, so that a reader never sees a partial number."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(f"{port}\n")
    staging.replace(path)


if __name__ == "__main__":
    sys.exit(main())
