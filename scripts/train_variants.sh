#!/bin/sh
# Meta-train the checkpoints that the variant rows of benchmarks/baselines.py adapt, one after
# the other, into .cache/variants/NAME. A run that stops resumes when the script starts again.
# Usage: sh scripts/train_variants.sh [NAME ...]   (default: every configs/variants/*.json)
set -e
cd "$(dirname "$0")/.."
names="$*"
if [ -z "$names" ]; then
    # The 2,800-step variant goes last because it continues the conv4-full checkpoint.
    all=$(for config in configs/variants/*.json; do basename "$config" .json; done)
    names="$(echo "$all" | grep -v -- '-2800$') $(echo "$all" | grep -- '-2800$')"
fi
for name in $names; do
    echo "meta-training variant $name"
    # The 2,800-step variant continues a 1,600-step run, so it starts from that checkpoint.
    case "$name" in
        conv4-2800) start=.cache/variants/conv4-full ;;
        *) start= ;;
    esac
    if [ -n "$start" ] && [ ! -e ".cache/variants/$name" ]; then
        if [ ! -e "$start/checkpoint.json" ]; then
            echo "variant $name continues $start, but $start/checkpoint.json is missing. Meta-train that run first." >&2
            exit 1
        fi
        mkdir -p .cache/variants
        cp -r "$start" ".cache/variants/$name"
    fi
    .venv/bin/python -m meta_trainer --config "configs/variants/$name.json" --output ".cache/variants/$name" \
        --final-tasks 5 --threads 1
done
