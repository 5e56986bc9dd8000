"""What every model loader shares: the profile names, the model dir, the missing-weights error
and the default dtype. Loaders (models/anomaly/loader.py, models/subject/loader.py) import this
module; models/profiles.py, which registers them, imports them: no import circle."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

PROFILES = ("tiny", "pretrained", "auto")
MODEL_DIR_ENV = "VISIONJOBS_MODEL_DIR"


class WeightsMissing(RuntimeError):
    """The pretrained profile was asked for and some of its files are not there."""

    def __init__(self, kind: str, model_dir: Path | None, missing: list[str]):
        self.kind, self.model_dir, self.missing = kind, model_dir, missing
        where = str(model_dir) if model_dir is not None else f"(no model dir: {MODEL_DIR_ENV} is not set)"
        super().__init__(
            f"{kind}: pretrained weights missing under {where}: {', '.join(missing)}. "
            f"Set {MODEL_DIR_ENV} to the folder that holds them (see `visionjobs models fetch`), "
            f"or use the 'tiny' profile for development."
        )


def default_model_dir(model_dir: str | Path | None = None) -> Path | None:
    """An explicit model dir, else VISIONJOBS_MODEL_DIR, else None."""
    if model_dir is None:
        model_dir = os.environ.get(MODEL_DIR_ENV) or None
    return Path(model_dir).expanduser() if model_dir is not None else None


def default_dtype(device: "str | torch.device") -> "torch.dtype":
    """float16 on CUDA (what SD 1.5-family weights are usually run in; pass
    dtype=torch.bfloat16 to trade mantissa for range), float32 elsewhere (CPU half is slow)."""
    import torch

    return torch.float16 if torch.device(device).type == "cuda" else torch.float32
