"""Backbones per model profile: `pretrained` loads torchvision/timm-format weights from
`$VISIONJOBS_MODEL_DIR/anomaly/<arch>.{pth,safetensors}`; `tiny` builds seeded random
weights (the same classes); `auto` takes the file when present."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("visionjobs.models")
ANOMALY_DIR = "anomaly"


class BackboneWeightsMissing(RuntimeError):
    pass


def weights_file(arch: str, model_dir: Path | None) -> Path | None:
    if model_dir is None:
        return None
    for ext in ("safetensors", "pth"):
        path = Path(model_dir) / ANOMALY_DIR / f"{arch}.{ext}"
        if path.is_file():
            return path
    return None


def load_backbone(arch: str, profile: str, model_dir: Path | None, device: str):
    """(backbone, weights path or None, resolved profile)."""
    from models.anomaly.backbone import build_backbone

    path = None if profile == "tiny" or arch == "tiny" else weights_file(arch, model_dir)
    if profile == "pretrained" and arch != "tiny" and path is None:
        raise BackboneWeightsMissing(f"no weights for backbone {arch}: put {ANOMALY_DIR}/{arch}.pth (torchvision "
                                     f"format) under VISIONJOBS_MODEL_DIR ({model_dir})")
    if profile == "auto" and path is None and arch != "tiny":
        log.warning("!!! anomaly backbone %s: no weights under %s; using SEEDED RANDOM weights !!!", arch, model_dir)
    resolved = "pretrained" if path else "tiny"
    return build_backbone(arch, weights=path, device=device), path, resolved
