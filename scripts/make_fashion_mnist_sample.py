#!/usr/bin/env python3
"""Write the small Fashion-MNIST sample used by `make demo` and the tests.

Reads Debian's dataset-fashion-mnist IDX files and writes, with a fixed seed:
- examples/fashion-mnist/support.npz: 20 images per class from the training file;
- examples/fashion-mnist/heldout.npz: 50 images per class from the t10k file.
Each file contains `images` (N, 28, 28) uint8, `labels` (N,) int64 and `class_names`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from archadapt_client.loaders import read_idx

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUTPUT = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"
CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def sample(images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator):
    chosen = np.concatenate([rng.choice(np.nonzero(labels == c)[0], per_class, replace=False) for c in range(10)])
    return images[chosen], labels[chosen].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with the gzipped IDX files")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder to write support.npz and heldout.npz")
    parser.add_argument("--shots", type=int, default=20, help="support images per class")
    parser.add_argument("--heldout", type=int, default=50, help="held-out images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice of images")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    train = read_idx(args.source / "train-images-idx3-ubyte.gz"), read_idx(args.source / "train-labels-idx1-ubyte.gz")
    test = read_idx(args.source / "t10k-images-idx3-ubyte.gz"), read_idx(args.source / "t10k-labels-idx1-ubyte.gz")
    for name, (images, labels), per_class in (("support", train, args.shots), ("heldout", test, args.heldout)):
        x, y = sample(images, labels, per_class, rng)
        np.savez_compressed(args.output / f"{name}.npz", images=x, labels=y, class_names=np.array(CLASS_NAMES))
        print(f"wrote {args.output / name}.npz: {len(y)} images")


if __name__ == "__main__":
    main()
