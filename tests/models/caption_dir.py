"""Writes the tiny BLIP captioner where the pretrained colorize profile reads it."""
from __future__ import annotations

from pathlib import Path

from models.colorization.caption import tiny_captioner
from models.colorization.weights_layout import CAPTION_DIR


def write_tiny_captioner(model_dir: Path, seed: int = 6) -> Path:
    """`{model_dir}/blip-image-captioning-base/` holding the tiny profile's captioner (seed 6 is
    the one `tiny_components(seed=0)` builds)."""
    model, processor = tiny_captioner(seed)
    out = Path(model_dir) / CAPTION_DIR
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
