"""The `tiny` profile of video editing: SD's components with tiny widths and seeded weights.

Reuses the colorization profile's builders (VAE, CLIP tokenizer and text tower, DDIM with
SD 1.5's schedule) and its UNet layout; only the UNet's input differs: Tune-A-Video edits with
a plain text-to-image UNet (4 latent channels), not the 9-channel inpainting one.
"""

from __future__ import annotations

from diffusers import UNet2DConditionModel

from models.colorization import tiny as base

TINY_SIZE = base.TINY_SHORT_SIDE  # 64x64 px -> 8x8 latents
TINY_FRAMES = 8
TINY_BASE_MODEL_ID = "tiny-sd"


def tiny_video_unet(seed: int = 0) -> UNet2DConditionModel:
    """The colorization tiny UNet's config with 4 input channels, seeded."""
    config = {k: v for k, v in base.tiny_unet(seed).config.items() if not k.startswith("_")}
    config["in_channels"] = 4
    with base._seeded(seed):
        return UNet2DConditionModel.from_config(config)


def tiny_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """vae, text_encoder, tokenizer, unet (2D, not yet inflated), scheduler: the same seed
    gives bit-identical weights. prediction_type "v_prediction" is the SD 2.x-768 flavour."""
    from diffusers import DDIMScheduler

    tokenizer = base.tiny_tokenizer()
    scheduler = base.tiny_scheduler()
    if prediction_type != scheduler.config.prediction_type:
        scheduler = DDIMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    return dict(
        vae=base.tiny_vae(seed + 2).eval(),
        text_encoder=base.tiny_text_encoder(tokenizer, seed + 3),
        tokenizer=tokenizer,
        unet=tiny_video_unet(seed).eval(),
        scheduler=scheduler,
    )
