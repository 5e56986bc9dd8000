"""Build the Tune-A-Video pipeline for a profile (called by models.profiles for "video.edit").

    tiny        seeded tiny SD components (models.video.tuneavideo.tiny), 8 frames at 64x64
    pretrained  an SD 1.x diffusers folder (unet, vae, text_encoder, tokenizer, scheduler),
                24 frames at 512x512 (the official configs)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

PRETRAINED_FRAMES = 24
PRETRAINED_SIZE = 512


def build_pipeline(profile: str, root: Path | None, base_model_id: str, device, dtype: torch.dtype, *,
                   seed: int = 0, inflate_seed: int = 0):
    """A TuneAVideoPipeline on `device` in `dtype`. `root` is the SD folder (pretrained);
    `seed` builds the tiny weights; `inflate_seed` initialises the temporal attentions."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from models.video.tuneavideo import tiny
    from models.video.tuneavideo.pipeline import TuneAVideoPipeline

    if profile == "tiny":
        components = tiny.tiny_components(seed)
        sizes = dict(default_frames=tiny.TINY_FRAMES, default_width=tiny.TINY_SIZE, default_height=tiny.TINY_SIZE)
        base_model_id = f"{tiny.TINY_BASE_MODEL_ID}-seed{seed}"
    elif profile == "pretrained":
        kw = dict(local_files_only=True)  # never reach for the network from a worker
        dkw = dict(kw, torch_dtype=dtype, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        scheduler = DDIMScheduler.from_pretrained(root / "scheduler", **kw)
        # As the official pipeline does for old scheduler configs: steps_offset 1, no clipping.
        if scheduler.config.get("steps_offset") != 1 or scheduler.config.get("clip_sample"):
            scheduler = DDIMScheduler.from_config(scheduler.config, steps_offset=1, clip_sample=False)
        components = dict(
            unet=UNet2DConditionModel.from_pretrained(root / "unet", **dkw),
            vae=AutoencoderKL.from_pretrained(root / "vae", **dkw),
            text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer", **kw),
            scheduler=scheduler,
        )
        sizes = dict(default_frames=PRETRAINED_FRAMES, default_width=PRETRAINED_SIZE, default_height=PRETRAINED_SIZE)
    else:
        raise ValueError(f"unknown resolved profile {profile!r}")
    for name in ("unet", "vae", "text_encoder"):
        if components[name].dtype != dtype:  # cast only what differs: to() on a model warns
            components[name] = components[name].to(dtype)
    pipe = TuneAVideoPipeline(**components, base_model_id=base_model_id, inflate_seed=inflate_seed, **sizes)
    return pipe.to(device)
