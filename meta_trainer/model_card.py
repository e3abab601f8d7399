"""The model card written beside a checkpoint: data, config, command, cost and accuracy."""

from __future__ import annotations

import json
from pathlib import Path

from archadapt.checkpoint import Checkpoint

CARD_FILE = "MODEL_CARD.md"


def write_model_card(checkpoint: Checkpoint, directory: Path, command: str) -> Path:
    state = checkpoint.state
    if checkpoint.architecture == "conv4":
        summary = (
            f"A meta-learned prior over the weights of MAML's 4-layer convolutional network "
            f"({checkpoint.conv4_channels} channels), a fixed-architecture baseline that the server does not serve."
        )
        network = "the adapted conv4 network"
    else:
        summary = "A meta-learned prior over DARTS cell architectures and supernet weights (BASE)."
        network = "the supernet under the most probable architecture of q(alpha)"
    lines = [
        f"# Checkpoint `{checkpoint.checkpoint_id}`",
        "",
        summary,
        "",
        "## Data",
        "",
        f"- {checkpoint.provenance.get('data', 'unknown')}",
        f"- meta_train classes: {checkpoint.provenance.get('meta_train_classes', 'unknown')}",
        "- No Fashion-MNIST image was used in meta-training.",
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        f"- Outer steps: {state.get('step')}, tasks seen: {state.get('tasks_seen')}",
        f"- Wall time: {state.get('wall_seconds', 0) / 60:.1f} min on device `{checkpoint.provenance.get('device')}`"
        f" ({checkpoint.provenance.get('machine', 'machine not recorded')})",
        f"- Code version: {checkpoint.provenance.get('code_version')}, torch {checkpoint.provenance.get('torch_version')}",
        "",
        "## Accuracy",
        "",
        f"Query accuracy after the meta-training inner loop, with {network};",
        "mean over tasks with a 95% confidence interval. The glyphs are rendered without the",
        "meta-training distortions, so a task can be solved partly by matching fonts. The tasks of",
        "`benchmarks/baselines.py`, with distortions and the serving-time adaptation, are harder.",
        "",
        "| setting | accuracy | tasks |",
        "|---|---|---|",
    ]
    for setting, estimate in checkpoint.metrics.get("final", {}).items():
        lines.append(f"| {setting} | {100 * estimate['mean']:.1f}% ± {100 * estimate['ci95']:.1f} | {estimate['tasks']} |")
    lines += [
        "",
        "## Config",
        "",
        "```json",
        json.dumps(checkpoint.config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    path = Path(directory) / CARD_FILE
    path.write_text("\n".join(lines))
    return path
