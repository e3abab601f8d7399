"""Checkpoints of the meta-learned prior: safetensors for tensors, JSON for everything else.

A checkpoint directory holds:
- `prior.safetensors`: theta (supernet weights and alpha logits) and the per-tensor log sigma
  of the weight prior, stored as `log_sigma/<name>`;
- `checkpoint.json`: the search space, the input spec, the embedding network (`architecture`,
  "supernet" or "conv4", absent from checkpoints older than conv4, which are supernets), the
  training config, provenance, metrics and the SHA-256 of every other file (the manifest).
Nothing is unpickled on load; a file whose digest differs from the manifest is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from archadapt.conv4 import ARCHITECTURES, DEFAULT_CHANNELS, Conv4
from archadapt.errors import CheckpointError, ConfigError
from archadapt.inner_loop import Prior
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import Supernet

TENSORS_FILE = "prior.safetensors"
MANIFEST_FILE = "checkpoint.json"
FORMAT_VERSION = 1
LOG_SIGMA_PREFIX = "log_sigma/"


@dataclass
class Checkpoint:
    space: SearchSpace
    spec: InputSpec
    prior: Prior
    config: dict = field(default_factory=dict)  # the training config that produced theta
    provenance: dict = field(default_factory=dict)  # data, steps, seed, code version, timings
    metrics: dict = field(default_factory=dict)  # for example meta_val accuracy
    state: dict = field(default_factory=dict)  # resumable training state (step, RNG seeds)
    architecture: str = "supernet"  # the embedding network of theta, one of ARCHITECTURES
    conv4_channels: int = DEFAULT_CHANNELS  # filters per convolution when the architecture is "conv4"

    @property
    def checkpoint_id(self) -> str:
        return self.provenance.get("checkpoint_id", "unknown")

    def check_supernet(self) -> None:
        """Raise CheckpointError unless theta is a supernet's, the only kind of network that adaptation serves."""
        if self.architecture != "supernet":
            raise CheckpointError(
                f"checkpoint {self.checkpoint_id} contains a {self.architecture} network, but adaptation needs a "
                "supernet checkpoint to search architectures; use a checkpoint meta-trained with architecture 'supernet'"
            )

    def build_supernet(self, device: torch.device | str = "cpu") -> Supernet:
        """Return a supernet whose parameters are theta, on `device`. Raise CheckpointError for other networks."""
        self.check_supernet()
        return self._load_into(Supernet(self.space, self.spec), device)

    def build_embedding_network(self, device: torch.device | str = "cpu") -> Supernet | Conv4:
        """Return the checkpoint's embedding network, a supernet or a conv4, with theta as its parameters, on `device`."""
        if self.architecture == "conv4":
            return self._load_into(Conv4(self.space, self.spec, self.conv4_channels), device)
        return self.build_supernet(device)

    def _load_into(self, network: Supernet | Conv4, device: torch.device | str) -> Supernet | Conv4:
        missing = set(dict(network.named_parameters())) - set(self.prior.parameters)
        if missing:
            raise CheckpointError(f"checkpoint lacks tensors {sorted(missing)[:5]} for its {self.architecture} network")
        network.load_state_dict(self.prior.parameters, strict=False)
        return network.to(device)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(checkpoint: Checkpoint, directory: Path, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint atomically: into a temporary sibling directory, then rename.

    `extra_tensors` (for example optimizer state) go into `state.safetensors` beside the prior.
    A crash at any point leaves either the old checkpoint or the new one, never a mix. The old
    one is moved to a backup directory just before the new one is renamed into place, so a crash
    between the two renames leaves it only there. `find_latest_checkpoint` looks in both places.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp creates it private; a checkpoint is meant to be shared
    try:
        tensors = {name: t.detach().cpu().contiguous() for name, t in checkpoint.prior.parameters.items()}
        for name, t in checkpoint.prior.log_sigma.items():
            tensors[LOG_SIGMA_PREFIX + name] = t.detach().cpu().reshape(())
        save_file(tensors, str(staging / TENSORS_FILE))
        files = [TENSORS_FILE]
        if extra_tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, str(staging / "state.safetensors"))
            files.append("state.safetensors")

        manifest = {
            "format_version": FORMAT_VERSION,
            "search_space": checkpoint.space.to_dict(),
            "input_spec": checkpoint.spec.to_dict(),
            "architecture": checkpoint.architecture,
            "config": checkpoint.config,
            "provenance": checkpoint.provenance,
            "metrics": checkpoint.metrics,
            "state": checkpoint.state,
            "files": {name: sha256_file(staging / name) for name in files},
        }
        if checkpoint.architecture == "conv4":
            manifest["conv4_channels"] = checkpoint.conv4_channels
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in staging.iterdir():
            path.chmod(0o644)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())

        backup = backup_directory(directory)
        if directory.exists():
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(directory, backup)
        os.replace(staging, directory)
        if backup.exists():
            shutil.rmtree(backup)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def backup_directory(directory: Path) -> Path:
    """Return where save_checkpoint keeps the previous checkpoint while it renames the new one into place."""
    directory = Path(directory)
    return directory.with_name(f".{directory.name}.old")


def find_latest_checkpoint(directory: Path) -> Path | None:
    """Return `directory` when it contains a checkpoint manifest, else its backup when that does, else None.

    Only the backup contains a checkpoint when save_checkpoint was killed between its two renames.
    """
    for candidate in (Path(directory), backup_directory(directory)):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    return None


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read and verify a checkpoint directory; raise CheckpointError naming any bad file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint manifest {manifest_path} not found")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint manifest {manifest_path} is not valid JSON: {error}") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format_version {manifest.get('format_version')}; this code reads {FORMAT_VERSION}"
        )
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise CheckpointError(f"checkpoint file {path} does not match the SHA-256 in {manifest_path}")
    if TENSORS_FILE not in manifest.get("files", {}):
        raise CheckpointError(f"checkpoint manifest {manifest_path} does not list {TENSORS_FILE}")

    try:
        space = SearchSpace.from_dict(manifest["search_space"])
        spec = InputSpec.from_dict(manifest["input_spec"])
    except (KeyError, ConfigError, TypeError) as error:
        raise CheckpointError(f"checkpoint manifest {manifest_path} is invalid: {error}") from error
    architecture = manifest.get("architecture", "supernet")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"checkpoint manifest {manifest_path} has architecture {architecture!r}; allowed: {list(ARCHITECTURES)}"
        )
    conv4_channels = manifest.get("conv4_channels", DEFAULT_CHANNELS)
    if architecture == "conv4" and not (isinstance(conv4_channels, int) and conv4_channels >= 1):
        raise CheckpointError(f"checkpoint manifest {manifest_path} has conv4_channels {conv4_channels!r}; expected a positive integer")

    tensors = load_file(str(directory / TENSORS_FILE), device=str(device))
    log_sigma = {k[len(LOG_SIGMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(LOG_SIGMA_PREFIX)}
    parameters = {k: v for k, v in tensors.items() if not k.startswith(LOG_SIGMA_PREFIX)}
    return Checkpoint(
        space=space,
        spec=spec,
        prior=Prior(parameters=parameters, log_sigma=log_sigma),
        config=manifest.get("config", {}),
        provenance=manifest.get("provenance", {}),
        metrics=manifest.get("metrics", {}),
        state=manifest.get("state", {}),
        architecture=architecture,
        conv4_channels=conv4_channels,
    )


def load_extra_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / "state.safetensors"
    return load_file(str(path)) if path.is_file() else {}
