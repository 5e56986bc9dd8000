"""Control Color (Liang et al., 2024) as a diffusers pipeline, with its own denoising loop.

Shape of one step, as in the official `ControlLDM.apply_model`:
    ControlNet(noisy latent [4 ch], pixel hint [3 ch], text) -> residuals
    UNet(cat(noisy latent, mask, masked-hint latent) [9 ch], text, + residuals) -> eps
CFG runs [uncond, cond] as one batch. The loop is written out (not the stock ControlNet
pipeline) because self-attention guidance and autoguidance need to re-enter it per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from models.colorization.lab import PreparedInput, prepare_input, replace_l, working_size
from models.guidance import cfg, split_cfg_batch

# The official demo's "added prompt" (joined as prompt + ", " + added) and negative prompt.
PROMPT_SUFFIX = ", best quality, detailed, real"
DEFAULT_NEGATIVE_PROMPT = (
    "a black and white photo, longbody, lowres, bad anatomy, bad hands, missing fingers, "
    "extra digit, fewer digits, cropped, worst quality, low quality"
)

StepCallback = Callable[["ControlColorPipeline", int, torch.Tensor, dict], "dict | None"]


@dataclass
class ColorizationOutput(BaseOutput):
    images: list  # PIL.Image.Image, RGB, each of the input's original size
    working_size: tuple  # (width, height) the model ran at
    original_size: tuple  # (width, height) of the input
    prompt: str  # the prompt as fed to the text encoder (suffix included)
    negative_prompt: str
    seed: int | None  # initial seed of the generator used, if one was given


@dataclass
class ModelInputs:
    """Everything besides the noisy latent that one ControlNet + UNet pass needs, batched."""

    text: torch.Tensor  # (B, 77, D) text-encoder hidden states
    hint: torch.Tensor  # (B, 3, H, W) ControlNet hint in [0, 1], pixel resolution
    mask: torch.Tensor  # (B, 1, h, w) latent resolution; 1 = generate, 0 = stroke
    masked_latents: torch.Tensor  # (B, 4, h, w) VAE latent of the masked hint image

    @staticmethod
    def cat(first: "ModelInputs", second: "ModelInputs") -> "ModelInputs":
        return ModelInputs(*(torch.cat([a, b]) for a, b in zip(vars(first).values(), vars(second).values())))


class ControlColorPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: DDIMScheduler,
        short_side: int = 512,
        max_long_side: int = 1536,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet, scheduler=scheduler
        )
        # Working resolution: shorter side to `short_side` (512 as released; the tiny profile
        # uses 64 so latents are 8x8), long side capped (see lab.working_size).
        self.register_to_config(short_side=short_side, max_long_side=max_long_side)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ inputs

    def working_size_for(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) the model will run at for this image; strokes and masks given to
        __call__ must have this size."""
        return working_size(image.width, image.height, self.config.short_side, self.config.max_long_side)

    def check_inputs(self, image, prompt, negative_prompt, num_inference_steps, guidance_scale, num_images,
                     generator, eta, mask, masked_hint, callback_on_step_end):
        if not isinstance(image, Image.Image):
            raise ValueError(f"`image` has to be a PIL.Image.Image (decode bytes with models.media.load_image), got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"`image` is empty ({image.width}x{image.height}); pass an image with pixels")
        if not isinstance(prompt, str):
            raise ValueError(f"`prompt` has to be a str, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"`negative_prompt` has to be a str or None (None = the default), got {type(negative_prompt).__name__}")
        max_steps = self.scheduler.config.num_train_timesteps
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= max_steps:
            raise ValueError(f"`num_inference_steps` has to be an int in [1, {max_steps}], got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be a finite number >= 0 (1 disables CFG), got {guidance_scale!r}")
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"`num_images` has to be an int >= 1, got {num_images!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"`generator` has to be a torch.Generator or None, got {type(generator).__name__}")
        if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` has to be in [0, 1] (0 = deterministic DDIM), got {eta!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError("`callback_on_step_end` has to be callable(pipe, step_index, timestep, callback_kwargs)")
        if (mask is None) != (masked_hint is None):
            raise ValueError("`mask` and `masked_hint` go together: pass both (strokes) or neither (unconditional)")
        if mask is not None:
            w, h = self.working_size_for(image)
            for name, t, c, lo in (("mask", mask, 1, 0.0), ("masked_hint", masked_hint, 3, -1.0)):
                if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1:] != (c, h, w) or t.shape[0] not in (1, num_images):
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"`{name}` has to be a tensor of shape (1 or num_images, {c}, {h}, {w}) at the working size, got {got}")
                if t.min() < lo or t.max() > 1:
                    raise ValueError(f"`{name}` values have to be in [{lo:g}, 1]")

    def encode_prompt(self, prompt: str, device, num_images: int) -> torch.Tensor:
        """CLIP last hidden state, 77 tokens (padded, truncated), repeated per output."""
        ids = self.tokenizer(
            [prompt], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        emb = self.text_encoder(ids)[0]
        return emb.repeat(num_images, 1, 1)

    def encode_masked_hint(self, masked_hint: torch.Tensor, generator) -> torch.Tensor:
        """VAE latent (sampled, x scaling factor) of the masked hint image in [-1, 1]: the
        official `get_first_stage_encoding(encode_first_stage(masked_image))`."""
        x = masked_hint.to(device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.encode(x).latent_dist.sample(generator) * self.vae.config.scaling_factor

    def prepare_model_inputs(self, prepared: PreparedInput, text: torch.Tensor, mask, masked_hint, generator) -> ModelInputs:
        device, dtype = self._execution_device, self.unet.dtype
        n = text.shape[0]
        w, h = prepared.working_size
        hint = torch.from_numpy(prepared.hint).permute(2, 0, 1)[None].to(device=device, dtype=self.controlnet.dtype)
        if mask is None:
            # Unconditional: no strokes, so mask all ones (generate everywhere) and the masked
            # image is hint * (mask < 0.5) = zeros in pixel space; the official code VAE-encodes
            # that zero image, so we do too (the zero *image*'s latent is not the zero latent).
            mask = torch.ones(1, 1, h, w)
            masked_hint = torch.zeros(1, 3, h, w)
        latent_size = (h // self.vae_scale_factor, w // self.vae_scale_factor)
        mask = F.interpolate(mask.to(device=device, dtype=torch.float32), size=latent_size, mode="nearest")
        masked_latents = self.encode_masked_hint(masked_hint, generator)
        return ModelInputs(
            text=text.to(dtype),
            hint=hint.expand(n, -1, -1, -1),
            mask=mask.to(dtype).expand(n, -1, -1, -1),
            masked_latents=masked_latents.to(dtype).expand(n, -1, -1, -1),
        )

    # ------------------------------------------------------------------ model passes

    def predict_noise(self, latents, t, inputs: ModelInputs, unet=None, controlnet=None,
                      controlnet_conditioning_scale: float = 1.0) -> torch.Tensor:
        """One ControlNet + UNet evaluation. `unet`/`controlnet` default to the pipeline's;
        autoguidance passes its weaker guide pair here."""
        unet = unet or self.unet
        controlnet = controlnet or self.controlnet
        x = self.scheduler.scale_model_input(latents, t).to(unet.dtype)
        down, mid = controlnet(
            x.to(controlnet.dtype), t, encoder_hidden_states=inputs.text, controlnet_cond=inputs.hint,
            conditioning_scale=controlnet_conditioning_scale, return_dict=False,
        )
        sample = torch.cat([x, inputs.mask, inputs.masked_latents], dim=1)  # SD-inpainting order
        eps = unet(
            sample, t, encoder_hidden_states=inputs.text,
            down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
        )[0]
        return eps.float()

    def guided_noise(self, latents, t, inputs: ModelInputs, guidance_scale: float, **kw) -> torch.Tensor:
        """Guided eps. With CFG `inputs` holds the [uncond, cond] batch (2N) and both halves
        run in one forward; without (scale 1) it holds the cond batch only."""
        if inputs.text.shape[0] == latents.shape[0]:
            return self.predict_noise(latents, t, inputs, **kw)
        eps_uncond, eps_cond = split_cfg_batch(self.predict_noise(torch.cat([latents, latents]), t, inputs, **kw))
        return cfg(eps_uncond, eps_cond, guidance_scale)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 (N, H, W, 3), as the official `x * 127.5 + 127.5`, clipped."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        x = (x.float() * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        prompt: str = "",
        negative_prompt: str | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.0,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        mask: torch.Tensor | None = None,
        masked_hint: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ColorizationOutput:
        """Colorize `image`. Returns `num_images` RGB images of the input's size whose Lab L
        channel is the input's. `mask` (1 = generate, 0 = stroke) and `masked_hint` (hint in
        [-1, 1] times (mask < 0.5)) are working-size pixel tensors; None = no strokes.
        `callback_on_step_end(pipe, step_index, timestep, {"latents": ...})` runs after every
        step; an exception raised there propagates (that is how a job is canceled)."""
        self.check_inputs(image, prompt, negative_prompt, num_inference_steps, guidance_scale, num_images,
                          generator, eta, mask, masked_hint, callback_on_step_end)
        device = self._execution_device
        full_prompt = prompt + PROMPT_SUFFIX
        negative_prompt = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        prepared = prepare_input(image, self.config.short_side, self.config.max_long_side)
        w, h = prepared.working_size

        # Initial noise first, then the masked-hint latent sample: a fixed order keeps a seed
        # reproducible. All outputs share one batch (one forward per step for all of them).
        shape = (num_images, self.unet.config.out_channels, h // self.vae_scale_factor, w // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma

        cond = self.prepare_model_inputs(prepared, self.encode_prompt(full_prompt, device, num_images), mask, masked_hint, generator)
        inputs = cond
        if guidance_scale != 1.0:  # the official sampler skips the uncond pass only at scale 1
            uncond_text = self.encode_prompt(negative_prompt, device, num_images).to(cond.text.dtype)
            inputs = ModelInputs.cat(ModelInputs(uncond_text, cond.hint, cond.mask, cond.masked_latents), cond)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                eps = self.guided_noise(latents, t, inputs, guidance_scale,
                                        controlnet_conditioning_scale=controlnet_conditioning_scale)
                latents = self.scheduler.step(eps, t, latents, eta=eta, generator=generator, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    if out:
                        latents = out.get("latents", latents)
                bar.update()

        decoded = self.decode_latents(latents)
        images = [Image.fromarray(replace_l(x, prepared.l_original)) for x in decoded]
        self.maybe_free_model_hooks()
        return ColorizationOutput(
            images=images,
            working_size=(w, h),
            original_size=prepared.original_size,
            prompt=full_prompt,
            negative_prompt=negative_prompt,
            seed=generator.initial_seed() if generator is not None else None,
        )
