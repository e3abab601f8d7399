#!/usr/bin/env python3
"""End-to-end demo: serve the committed checkpoint, adapt it to Fashion-MNIST, score the ONNX model.

1. Start `archadapt-server` with the committed checkpoint on a free loopback port.
2. Run `archadapt adapt` on examples/fashion-mnist/support.npz (10 classes, 20 images each),
   which writes model.onnx and prints the genotype and the time of each phase.
3. Run model.onnx with onnxruntime on examples/fashion-mnist/heldout.npz (50 images per class,
   never seen during adaptation) and print the accuracy.
4. Stop the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "fashion-mnist"


def start_server(checkpoint: Path, port_file: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--port-file", str(port_file), "--checkpoint", str(checkpoint),
         "--data-dir", str(port_file.parent / "data")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}; its log:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the server did not start within 120 s; its log:\n{log_path.read_text()}")
        time.sleep(0.2)
    return process


def heldout_accuracy(model_path: Path, heldout: Path) -> tuple[float, int]:
    data = np.load(heldout, allow_pickle=False)
    images = data["images"].astype(np.float32)[:, None] / 255.0  # (N, 1, 28, 28) in [0, 1]
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images})[0]
    return float((logits.argmax(axis=1) == data["labels"]).mean()), len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default", help="checkpoint directory to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "model.onnx", help="where to write the ONNX model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the adaptation")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="archadapt-demo-") as scratch:
        port_file, log_path = Path(scratch) / "port", Path(scratch) / "server.log"
        print(f"starting archadapt-server with {args.checkpoint}", flush=True)
        server = start_server(args.checkpoint, port_file, log_path)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        print(f"server listening on {address}", flush=True)
        try:
            command = [
                sys.executable, "-m", "archadapt_client", "adapt", "--server", address,
                "--data", str(SAMPLE / "support.npz"), "--out", str(args.out), "--seed", str(args.seed),
            ]
            print("$ archadapt adapt --server", address, "--data examples/fashion-mnist/support.npz --out", args.out, flush=True)
            started = time.perf_counter()
            completed = subprocess.run(command, cwd=ROOT)
            wall = time.perf_counter() - started
            if completed.returncode != 0:
                print(f"archadapt adapt failed with status {completed.returncode}; server log:\n{log_path.read_text()}", file=sys.stderr)
                return completed.returncode
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    accuracy, count = heldout_accuracy(args.out, SAMPLE / "heldout.npz")
    metadata = {p.key: p.value for p in onnx.load(str(args.out)).metadata_props}
    print()
    print(f"request to ONNX model: {wall:.1f} s (including the client's start-up)")
    print(f"genotype: {metadata['genotype']}")
    print(f"classes: {', '.join(json.loads(metadata['class_names']))}")
    print(f"held-out accuracy of {args.out.name} in onnxruntime: {100 * accuracy:.1f}% on {count} Fashion-MNIST images")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
