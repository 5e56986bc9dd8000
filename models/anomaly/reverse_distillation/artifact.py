"""The trained-model artifact: two files, as bytes, for object storage.

* ``student.safetensors``: the OCBE and decoder tensors (``bottleneck.*``, ``decoder.*``,
  weights and BatchNorm buffers, float32; ``num_batches_tracked`` as int64).
* ``reverse_distillation.json``: format tag, config, thresholds, normalisation stats, the
  teacher's identity (architecture, width, seed, weights source, sha256 fingerprint), the
  student file's sha256, and ``info``: the split record, the training history and best
  epoch, the validation metrics of the best epoch and the held-out ``test_metrics``.

The teacher is not in the artifact (it is the shared ImageNet backbone): loading rebuilds it
(seeded random weights) or takes the caller's weights / warm backbone and refuses one whose
fingerprint differs from the one the student was trained against. Thresholds change without
retraining: :meth:`set_thresholds` then :func:`save_artifact`, or :func:`update_thresholds`
on the JSON bytes alone (no torch). The JSON file's name differs from PatchCore's
(``patchcore.json``), so a caller can tell the two kinds of artifact apart.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..artifact import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..backbone import ResNet
    from .model import ReverseDistillationModel

__all__ = ["ARTIFACT_FORMAT", "CONFIG_FILE", "STUDENT_FILE", "load_artifact", "read_artifact_meta",
           "save_artifact", "update_thresholds"]

ARTIFACT_FORMAT = "visionjobs.reverse_distillation/1"
CONFIG_FILE = "reverse_distillation.json"
STUDENT_FILE = "student.safetensors"


def _dumps(meta: dict) -> bytes:
    return json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")


def save_artifact(model: "ReverseDistillationModel") -> dict[str, bytes]:
    """Serialise a trained model to ``{CONFIG_FILE: json bytes, STUDENT_FILE: bytes}``."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.net.student_state_dict().items()}
    student = save(state, metadata={"format": ARTIFACT_FORMAT})
    cfg, teacher = model.config, model.net.teacher
    weights = model.info.get("backbone_weights") or teacher.weights_source
    meta = {
        "format": ARTIFACT_FORMAT,
        "model": "reverse_distillation",
        "config": cfg.to_dict(),
        "thresholds": model.thresholds.to_dict(),
        "normalization": model.stats.to_dict(),
        "backbone": {
            # the seed a random teacher was drawn with (a warm teacher is shared by trainings of
            # any seed), so that the artifact alone rebuilds it
            "arch": cfg.backbone, "width": teacher.base_width, "seed": _random_seed(weights, cfg.seed),
            "weights": weights,
            "fingerprint": model.info.get("backbone_fingerprint"),
            "layers": ["layer1", "layer2", "layer3"],
        },
        "student": {"file": STUDENT_FILE, "tensors": len(state),
                    "parameters": int(sum(v.numel() for k, v in state.items() if "running" not in k
                                          and "num_batches" not in k)),
                    "sha256": hashlib.sha256(student).hexdigest()},
        "test_metrics": model.info.get("test_metrics"),
        "info": {k: v for k, v in model.info.items()
                 if k not in ("backbone_fingerprint", "backbone_weights", "test_metrics")},
    }
    return {CONFIG_FILE: _dumps(meta), STUDENT_FILE: student}


def _random_seed(weights, default: int) -> int:
    found = re.fullmatch(r"random:seed=(\d+)", str(weights or ""))
    return int(found.group(1)) if found else int(default)


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
        raise ArtifactError(f"not a {ARTIFACT_FORMAT} artifact")
    for key in ("config", "thresholds", "normalization", "backbone", "student"):
        if not isinstance(meta.get(key), dict):
            raise ArtifactError(f"{CONFIG_FILE} lacks {key!r}")
    return meta


def read_artifact_meta(files_or_json: Mapping[str, bytes] | bytes | str) -> dict:
    """The artifact's JSON as a dict (validated; no torch needed)."""
    return _meta_from(files_or_json)


def update_thresholds(files_or_json: Mapping[str, bytes] | bytes | str, *, image: float | None = None,
                      pixel: float | None = None) -> bytes:
    """New JSON bytes with the raw-unit ``image`` and/or ``pixel`` threshold replaced (method
    "manual"); the student file is untouched. No retraining, no torch."""
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
                  check_fingerprint: bool = True) -> "ReverseDistillationModel":
    """Rebuild a :class:`ReverseDistillationModel` from :func:`save_artifact`'s files.

    The teacher: ``backbone`` if given, else built from ``weights``, else (for a student
    trained against a seeded random teacher) rebuilt from the stored seed; its fingerprint
    must equal the stored one (``check_fingerprint``)."""
    from safetensors.torch import load as st_load

    from ..backbone import ARCHITECTURES, build_backbone, weights_fingerprint
    from ..common import resolve_device
    from ..postprocess import NormalizationStats, Thresholds
    from .model import ReverseDistillationConfig, ReverseDistillationModel, ReverseDistillationNet

    meta = _meta_from(files)
    if STUDENT_FILE not in files:
        raise ArtifactError(f"artifact lacks {STUDENT_FILE}")
    blob = files[STUDENT_FILE]
    expected_sha = meta["student"].get("sha256")
    if expected_sha and hashlib.sha256(blob).hexdigest() != expected_sha:
        raise ArtifactError(f"{STUDENT_FILE} does not match its sha256 in {CONFIG_FILE} (corrupt or mixed artifact)")
    try:
        state = st_load(blob)
    except Exception as exc:
        raise ArtifactError(f"cannot read {STUDENT_FILE}: {exc}") from exc
    try:
        cfg = ReverseDistillationConfig.from_dict(meta["config"]).validate()
        thresholds = Thresholds.from_dict(meta["thresholds"])
        stats = NormalizationStats.from_dict(meta["normalization"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"invalid {CONFIG_FILE}: {exc}") from exc
    b = meta["backbone"]
    dev = resolve_device(device)
    if backbone is None:
        stored = str(b.get("weights") or "")
        if weights is None and not stored.startswith("random:"):
            raise ArtifactError(f"artifact was trained with teacher weights {stored or 'unknown'!r}; "
                                "pass weights= or backbone=")
        seed = _random_seed(stored, b.get("seed", cfg.seed))
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
            raise ArtifactError(f"teacher weights differ from those the student was trained against "
                                f"(fingerprint {got[:12]} != {str(b['fingerprint'])[:12]})")
    net = ReverseDistillationNet(backbone, cfg)
    try:
        net.load_student_state_dict(state)
    except ValueError as exc:
        raise ArtifactError(f"{STUDENT_FILE}: {exc}") from exc
    info = dict(meta.get("info") or {})
    info["backbone_fingerprint"] = b.get("fingerprint")
    info["backbone_weights"] = b.get("weights")
    info["test_metrics"] = meta.get("test_metrics")
    return ReverseDistillationModel(cfg, net.eval(), thresholds, stats, info)
