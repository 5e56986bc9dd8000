"""Backbones of the anomaly kinds, per model profile (the `anomaly` entry of models.profiles).

    tiny        every architecture with seeded random weights; default architecture `tiny`
    pretrained  torchvision-format weights from `$VISIONJOBS_MODEL_DIR/anomaly/<arch>.safetensors`
                (or `.pth`); `visionjobs models fetch --kind anomaly` writes timm's
                `<arch>.tv_in1k` files there (torchvision's ImageNet weights, torchvision's key
                names). Default architecture `wide_resnet50_2`; `tiny` stays random.

A fitted model is scored with the backbone its artifact records (`for_artifact`), whatever the
scoring worker's profile: a memory bank means something only with the exact weights it was
built from, and the artifact's fingerprint check proves they are. This module imports torch
only when a backbone is built.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("visionjobs.models")
ANOMALY_DIR = "anomaly"
DEFAULT_ARCH = "wide_resnet50_2"  # PatchCore's backbone
RANDOM_SEED = 0  # seed of the random backbones the worker builds


def weight_names(arch: str) -> tuple[str, ...]:
    """Accepted weight files of `arch`, relative to the model dir (first: what fetch writes)."""
    return (f"{ANOMALY_DIR}/{arch}.safetensors", f"{ANOMALY_DIR}/{arch}.pth")


def required(arch: str) -> list[tuple[str, ...]]:
    """The `required` list of a models.profiles entry whose pretrained profile needs `arch`."""
    return [] if arch == "tiny" else [weight_names(arch)]


def weights_file(arch: str, model_dir: Path | None) -> Path | None:
    if model_dir is None:
        return None
    for name in weight_names(arch):
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    return None


def missing(arch: str, model_dir: Path | None) -> list[str]:
    """The weight file `arch` lacks under `model_dir` ([] for the random `tiny` architecture)."""
    return [] if arch == "tiny" or weights_file(arch, model_dir) else [weight_names(arch)[0]]


@dataclass
class LoadedBackbone:
    arch: str
    net: Any  # models.anomaly.backbone.ResNet, eval mode, frozen
    profile: str  # "tiny" (seeded random weights) | "pretrained" (a weight file)
    weights: str  # "random:seed=N" | "file:<name>"
    fingerprint: str  # sha256 of the state_dict (models.anomaly.backbone.weights_fingerprint)


class AnomalyBackbones:
    """The anomaly kinds' warm model: backbones by architecture, built on first use and kept.

    `get(arch)` follows the profile; `for_artifact(meta)` follows a fitted model's record."""

    def __init__(self, profile: str, model_dir: Path | None, device: str = "cpu"):
        if profile not in ("tiny", "pretrained"):
            raise ValueError(f"profile must be resolved to tiny or pretrained, got {profile!r}")
        self.model_profile, self.model_dir, self.device = profile, model_dir, device
        self._nets: dict[tuple, LoadedBackbone] = {}
        self._lock = threading.Lock()

    @property
    def default_arch(self) -> str:
        return "tiny" if self.model_profile == "tiny" else DEFAULT_ARCH

    @property
    def components(self) -> dict[str, Any]:
        """The built networks (the warm cache sizes a model by its components' parameters)."""
        return {f"{k[0]}:{k[1]}": b.net for k, b in self._nets.items()}

    def missing(self, arch: str | None = None) -> list[str]:
        """What `get(arch)` would need and lacks: nothing under tiny or for the tiny architecture."""
        arch = arch or self.default_arch
        return [] if self.model_profile == "tiny" else missing(arch, self.model_dir)

    def get(self, arch: str | None = None) -> LoadedBackbone:
        arch = arch or self.default_arch
        if self.model_profile == "tiny" or arch == "tiny":
            return self.random(arch)
        return self.pretrained(arch)

    def random(self, arch: str, seed: int = RANDOM_SEED, width: int | None = None) -> LoadedBackbone:
        return self._build(("random", arch, int(seed), width))

    def pretrained(self, arch: str) -> LoadedBackbone:
        return self._build(("file", arch))

    def for_artifact(self, meta: dict) -> LoadedBackbone:
        """The backbone a fitted model (`models.anomaly.read_artifact_meta`) was built with."""
        b, cfg = meta["backbone"], meta["config"]
        source = str(b.get("weights") or "")
        arch = str(b.get("arch") or cfg.get("backbone"))
        if source.startswith("random:"):
            m = re.search(r"seed=(\d+)", source)
            return self.random(arch, int(m.group(1)) if m else int(b.get("seed", RANDOM_SEED)),
                               cfg.get("backbone_width"))
        return self.pretrained(arch)

    def _build(self, key: tuple) -> LoadedBackbone:
        with self._lock:
            if key not in self._nets:
                self._nets[key] = self._load(key)
            return self._nets[key]

    def _load(self, key: tuple) -> LoadedBackbone:
        from models.anomaly.backbone import build_backbone, weights_fingerprint

        if key[0] == "random":
            _, arch, seed, width = key
            net = build_backbone(arch, width=width, seed=seed, device=self.device)
            profile = "tiny"
        else:
            arch = key[1]
            path = weights_file(arch, self.model_dir)
            if path is None:
                from models.weights import WeightsMissing

                raise WeightsMissing(f"anomaly (backbone {arch})", self.model_dir, [weight_names(arch)[0]])
            net = build_backbone(arch, weights=path, device=self.device)
            profile = "pretrained"
        log.info("anomaly backbone %s: %s", arch, net.weights_source)
        return LoadedBackbone(arch, net, profile, net.weights_source, weights_fingerprint(net))


def load_fitted(files: dict[str, bytes], model_dir: Path | None = None, device: str = "cpu"):
    """A fitted PatchCore model from its artifact files alone (plus, for one fitted with
    pretrained weights, the model dir holding them): the backbone is rebuilt as recorded and
    its fingerprint checked."""
    from models.anomaly.artifact import load_artifact, read_artifact_meta

    backbone = AnomalyBackbones("pretrained", model_dir, device).for_artifact(read_artifact_meta(files))
    return load_artifact(files, backbone=backbone.net, device=device)
