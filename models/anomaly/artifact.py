"""The fitted-model artifact: two files, as bytes, for object storage.

* ``memory_bank.safetensors``: one float32 tensor ``memory_bank`` of shape (M, C).
* ``patchcore.json``: format tag, config, thresholds, normalisation stats, backbone identity
  (architecture, width, seed, where its weights came from, sha256 fingerprint of its
  state_dict) and the memory bank's shape and sha256.

The backbone weights are not part of the artifact (they are shared, and large); loading
rebuilds the backbone (seeded random weights) or takes the caller's weights / warm backbone
and refuses one whose fingerprint differs from the one the memory bank was built with.

Thresholds can be changed without refitting, either on a loaded model
(:meth:`PatchCoreModel.set_thresholds` then :func:`save_artifact`) or directly on the JSON
bytes with :func:`update_thresholds`. Everything except :func:`save_artifact` and
:func:`load_artifact` is plain JSON work and does not import torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbone import ResNet
    from .patchcore import PatchCoreModel

__all__ = [
    "ARTIFACT_FORMAT",
    "ArtifactError",
    "CONFIG_FILE",
    "MEMORY_BANK_FILE",
    "load_artifact",
    "read_artifact_meta",
    "save_artifact",
    "update_thresholds",
]

ARTIFACT_FORMAT = "visionjobs.patchcore/1"
CONFIG_FILE = "patchcore.json"
MEMORY_BANK_FILE = "memory_bank.safetensors"


class ArtifactError(ValueError):
    """A malformed, inconsistent or incompatible artifact."""


def _dumps(meta: dict) -> bytes:
    return json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")


def save_artifact(model: "PatchCoreModel") -> dict[str, bytes]:
    """Serialise a fitted model to ``{CONFIG_FILE: json bytes, MEMORY_BANK_FILE: bytes}``."""
    import torch
    from safetensors.torch import save

    bank = model.memory_bank.detach().to("cpu", torch.float32).contiguous()
    bank_bytes = save({"memory_bank": bank}, metadata={"format": ARTIFACT_FORMAT})
    cfg = model.config
    weights = model.info.get("backbone_weights") or model.backbone.weights_source
    random_seed = re.fullmatch(r"random:seed=(\d+)", str(weights))
    meta = {
        "format": ARTIFACT_FORMAT,
        "config": cfg.to_dict(),
        "thresholds": model.thresholds.to_dict(),
        "normalization": model.stats.to_dict(),
        "backbone": {
            "arch": cfg.backbone,
            "width": model.backbone.base_width,
            # the seed the random backbone was drawn with (not the fit's seed: a worker's warm
            # backbone is shared by fits of any seed), so the artifact alone rebuilds it
            "seed": int(random_seed.group(1)) if random_seed else cfg.seed,
            "weights": weights,
            "fingerprint": model.info.get("backbone_fingerprint"),
            "layers": model.info.get("layers", ["layer2", "layer3"]),
        },
        "memory_bank": {
            "file": MEMORY_BANK_FILE,
            "shape": list(bank.shape),
            "dtype": "float32",
            "sha256": hashlib.sha256(bank_bytes).hexdigest(),
        },
        "info": {k: v for k, v in model.info.items() if k not in ("backbone_fingerprint", "backbone_weights")},
    }
    return {CONFIG_FILE: _dumps(meta), MEMORY_BANK_FILE: bank_bytes}


def _meta_from(files_or_json: Mapping[str, bytes] | bytes | str) -> dict:
    raw: Any = files_or_json
    if isinstance(raw, Mapping):
        if CONFIG_FILE not in raw:
            raise ArtifactError(f"artifact lacks {CONFIG_FILE}")
        raw = raw[CONFIG_FILE]
    try:
        meta = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"not a {ARTIFACT_FORMAT} artifact (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    for key in ("config", "thresholds", "normalization", "backbone", "memory_bank"):
        if not isinstance(meta.get(key), dict):
            raise ArtifactError(f"{CONFIG_FILE} lacks {key!r}")
    return meta


def read_artifact_meta(files_or_json: Mapping[str, bytes] | bytes | str) -> dict:
    """The artifact's JSON as a dict (validated; no torch needed)."""
    return _meta_from(files_or_json)


def update_thresholds(files_or_json: Mapping[str, bytes] | bytes | str, *, image: float | None = None,
                      pixel: float | None = None) -> bytes:
    """New ``patchcore.json`` bytes with the raw-unit ``image`` and/or ``pixel`` threshold
    replaced (method "manual"); the memory bank is untouched. No refit, no torch."""
    meta = _meta_from(files_or_json)
    for name, value in (("image", image), ("pixel", pixel)):
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value):
            raise ArtifactError(f"{name} threshold must be finite")
        meta["thresholds"][name] = value
        meta["thresholds"][f"{name}_method"] = "manual"
    return _dumps(meta)


def load_artifact(files: Mapping[str, bytes], *, backbone: "ResNet | None" = None,
                  weights: str | os.PathLike | Mapping[str, "torch.Tensor"] | None = None,
                  device: "str | torch.device | None" = None,
                  check_fingerprint: bool = True) -> "PatchCoreModel":
    """Rebuild a :class:`PatchCoreModel` from :func:`save_artifact`'s files.

    The backbone: ``backbone`` (e.g. from a warm cache) if given, else built from
    ``weights``, else, for artifacts fitted with seeded random weights, rebuilt from the
    stored seed. Its fingerprint must equal the stored one (``check_fingerprint``), since a
    memory bank is only meaningful with the exact backbone it was built from.
    """
    import torch
    from safetensors.torch import load as st_load

    from .backbone import ARCHITECTURES, build_backbone, weights_fingerprint
    from .patchcore import PatchCoreConfig, PatchCoreModel, resolve_device
    from .postprocess import NormalizationStats, Thresholds

    meta = _meta_from(files)
    if MEMORY_BANK_FILE not in files:
        raise ArtifactError(f"artifact lacks {MEMORY_BANK_FILE}")
    bank_bytes = files[MEMORY_BANK_FILE]
    expected_sha = meta["memory_bank"].get("sha256")
    if expected_sha and hashlib.sha256(bank_bytes).hexdigest() != expected_sha:
        raise ArtifactError("memory bank does not match its sha256 in patchcore.json (corrupt or mixed artifact)")
    try:
        tensors = st_load(bank_bytes)
    except Exception as exc:
        raise ArtifactError(f"cannot read {MEMORY_BANK_FILE}: {exc}") from exc
    if "memory_bank" not in tensors:
        raise ArtifactError(f"{MEMORY_BANK_FILE} lacks the 'memory_bank' tensor")
    bank = tensors["memory_bank"].float()
    if list(bank.shape) != list(meta["memory_bank"]["shape"]) or bank.ndim != 2:
        raise ArtifactError(f"memory bank shape {list(bank.shape)} != {meta['memory_bank']['shape']}")

    try:
        cfg = PatchCoreConfig.from_dict(meta["config"]).validate()
        thresholds = Thresholds.from_dict(meta["thresholds"])
        stats = NormalizationStats.from_dict(meta["normalization"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"invalid {CONFIG_FILE}: {exc}") from exc
    b = meta["backbone"]
    dev = resolve_device(device)
    if backbone is None:
        stored = str(b.get("weights") or "")
        if weights is None and not stored.startswith("random:"):
            raise ArtifactError(f"artifact was fitted with backbone weights {stored or 'unknown'!r}; "
                                "pass weights= or backbone=")
        recorded = re.fullmatch(r"random:seed=(\d+)", stored)
        seed = int(recorded.group(1)) if recorded else int(b.get("seed", cfg.seed))
        backbone = build_backbone(cfg.backbone, width=cfg.backbone_width, weights=weights, seed=seed, device=dev)
    else:
        expected_width = cfg.backbone_width or ARCHITECTURES[cfg.backbone].width
        if backbone.arch != cfg.backbone or backbone.base_width != expected_width:
            raise ArtifactError(f"backbone {backbone.arch}/{backbone.base_width} does not match the "
                                f"artifact's {cfg.backbone}/{expected_width}")
        backbone.eval().requires_grad_(False).to(dev)
    if check_fingerprint and b.get("fingerprint"):
        got = weights_fingerprint(backbone)
        if got != b["fingerprint"]:
            raise ArtifactError(f"backbone weights differ from those the memory bank was built with "
                                f"(fingerprint {got[:12]} != {str(b['fingerprint'])[:12]})")
    if bank.shape[1] != sum(backbone.feature_channels.values()):
        raise ArtifactError(f"memory bank dimension {bank.shape[1]} does not fit backbone "
                            f"{cfg.backbone} ({sum(backbone.feature_channels.values())})")
    info = dict(meta.get("info") or {})
    info["backbone_fingerprint"] = b.get("fingerprint")
    info["backbone_weights"] = b.get("weights")
    return PatchCoreModel(cfg, backbone, bank.to(dev), thresholds, stats, info)
