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

from archadapt.checkpoint import load_checkpoint
from archadapt.errors import CheckpointError
from server.app import create_server
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
    parser.add_argument("--max-images", type=int, default=RequestLimits.max_images, help="most images accepted in one request")
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
        device = torch.device(args.device)
    try:
        checkpoint = load_checkpoint(args.checkpoint, device="cpu")
    except CheckpointError as error:
        logger.error("cannot load checkpoint: %s", error)
        return 2

    try:
        security = security_from_args(args)
    except SecurityConfigError as error:
        logger.error("invalid security options: %s", error)
        return 2

    limits = RequestLimits(max_images=args.max_images)
    running = create_server(f"{args.host}:{args.port}", checkpoint, device, limits, security=security)
    logger.info(
        "serving checkpoint %s from %s on %s:%d; device %s (%d CPU threads); "
        "onnxruntime %s providers %s loaded of %s available",
        checkpoint.checkpoint_id, args.checkpoint, args.host, running.port, device, torch.get_num_threads(),
        onnxruntime.__version__, loaded_providers(), onnxruntime.get_available_providers(),
    )
    logger.info("connections: %s", describe(security, args))
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stopped.set())
    if args.port_file:
        args.port_file.write_text(f"{running.port}\n")
    stopped.wait()
    logger.info("shutting down")
    running.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
