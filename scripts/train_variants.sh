#!/bin/sh
# Meta-train the checkpoints that the variant rows of benchmarks/baselines.py adapt, one after
# the other, into .cache/variants/NAME. A run that stops resumes when the script starts again.
# Usage: sh scripts/train_variants.sh [NAME ...]   (default: every configs/variants/*.json)
set -e
cd "$(dirname "$0")/.."
names="$*"
if [ -z "$names" ]; then
    names=$(for config in configs/variants/*.json; do basename "$config" .json; done)
fi
for name in $names; do
    echo "meta-training variant $name"
    if [ "$name" = default-2800 ] && [ ! -e ".cache/variants/$name" ]; then
        # This variant continues the committed prior's run, so it starts from that checkpoint.
        mkdir -p .cache/variants
        cp -r checkpoints/default ".cache/variants/$name"
    fi
    .venv/bin/python -m meta_trainer --config "configs/variants/$name.json" --output ".cache/variants/$name" \
        --final-tasks 5 --threads 1
done
