#!/usr/bin/env python3
"""Adapt a running archadapt server to the Fashion-MNIST sample with the Python client library.

Needs only the client distribution (`pip install "clients/python[show]"`), no torch:

    python examples/python_client.py --server 127.0.0.1:50051 --out-dir results/

It loads examples/fashion-mnist/support.npz, adapts with a progress callback, saves the ONNX
model, writes a Triton model repository entry and draws the genotype when Graphviz is installed.
Pass --tls-ca, --token-file, --inner-steps and --finetune-steps as needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archadapt_client import ArchadaptError, Client, ProgressUpdate, RetryPolicy, load_dataset
from archadapt_client.genotype_diagram import RendererMissingError, describe_genotype, render_genotype
from archadapt_client.triton import write_triton_model

SUPPORT = Path(__file__).resolve().parent / "fashion-mnist" / "support.npz"


def print_progress(update: ProgressUpdate) -> None:
    # One line at the first and last step of each phase, to keep the output short.
    if update.step in (1, update.total_steps):
        print(f"{update.phase:>8} {update.step:>4}/{update.total_steps:<4} loss {update.loss:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of the archadapt server")
    parser.add_argument("--out-dir", type=Path, default=Path("results"), help="directory for the outputs (default: results)")
    parser.add_argument("--tls-ca", type=Path, help="CA bundle that signed the server's TLS certificate")
    parser.add_argument("--token-file", type=Path, help="file whose first line is the bearer token")
    parser.add_argument("--inner-steps", type=int, default=0, help="inner-loop steps (default: the server's)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps (default: the server's)")
    args = parser.parse_args()

    dataset = load_dataset(SUPPORT)
    token = args.token_file.read_text().split("\n")[0].strip() if args.token_file else None
    args.out_dir.mkdir(parents=True, exist_ok=True)

    try:
        with Client(
            args.server, timeout=900, retry=RetryPolicy(max_attempts=3), root_certificates=args.tls_ca, token=token
        ) as client:
            info = client.info()
            print(f"server {info.archadapt_version} with checkpoint {info.checkpoint_id} on {info.device}")
            result = client.adapt(
                dataset.images,
                dataset.labels,
                dataset.class_names,
                on_progress=print_progress,
                seed=1,
                inner_steps=args.inner_steps,
                finetune_steps=args.finetune_steps,
            )
    except ArchadaptError as error:
        print(f"error: {error}")
        for field, description in error.field_violations:
            print(f"  {field}: {description}")
        return 1

    model = result.save(args.out_dir / "fashion.onnx")
    print(f"model: {model}, validation accuracy {result.metrics.validation_accuracy:.3f}")
    print(describe_genotype(result.genotype))
    entry = write_triton_model(result.onnx_model, args.out_dir / "triton", "fashion_mnist", overwrite=True)
    print(f"Triton model: {entry}")
    try:
        print(f"diagram: {render_genotype(result.genotype, args.out_dir / 'cells.svg')}")
    except RendererMissingError as error:
        print(f"no diagram: {error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
