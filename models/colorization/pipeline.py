"""Control Color (Liang et al., 2024) as a diffusers pipeline, with its own denoising loop.

Shape of one step, as in the official `ControlLDM.apply_model`:
    ControlNet(noisy latent [4 ch], pixel hint [3 ch], text) -> residuals
    UNet(cat(noisy latent, mask, masked-hint latent) [9 ch], text, + residuals) -> eps
Guidance (models.guidance): CFG runs [uncond, cond] as one batch; autoguidance runs the main
pair and the weaker guide pair on the same conditional inputs; `none` runs the main pair only.
Streamlined SAG (models.colorization.sag) re-enters the guided prediction on the degraded x0
at the steps with t > sag_threshold. The loop is written out (not the stock ControlNet or SAG
pipeline) because SAG and autoguidance need to re-enter it per step.

Modes combine in one call: prompt + vector strokes and/or a stroke image + exemplar. An empty
prompt is replaced by a BLIP caption of the input, as the official demo does (models.colorization
.caption; `auto_caption=False` turns it off).

`parity` (models.colorization.parity) switches back to the official code where the project
deviates: the SAG heads, the working-size rule, ldm's 'uniform' timesteps, gray inputs' L, the
plain L merge (fp32 is the loader's dtype).

SAG with autoguidance (our decision; the paper combines SAG with CFG only): SAG wraps whatever
guided prediction the mode produces. x0 comes from the guided eps, the degraded pass repeats
the same guided prediction (main and guide pairs), and the attention map is the main UNet's:
its unconditional half under CFG (as the official code), its conditional pass under
autoguidance and `none` (there is no unconditional pass; the guide is a different network).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from models.colorization import weights_layout as layout
from models.colorization.caption import caption_images, caption_input
from models.colorization.deformable import ContentGuidedVAE
from models.colorization.exemplar import encode_exemplar
from models.colorization.lab import PreparedInput, prepare_input, replace_l, working_size
from models.colorization.parity import Parity, uniform_timesteps
from models.colorization.sag import MidBlockAttention, predicted_x0, sag_degrade
from models.colorization.stroke_spec import validate_strokes
from models.colorization.strokes import build_stroke_hint
from models.guidance import GuidanceConfig, split_cfg_batch

# The official demo's "added prompt" (joined as prompt + ', ' + a_prompt in test.py) and negative
# prompt. An empty prompt (no caption) gets the added prompt alone, without the leading comma.
ADDED_PROMPT = "best quality, detailed, real"
PROMPT_SUFFIX = ", " + ADDED_PROMPT
DEFAULT_NEGATIVE_PROMPT = (
    "a black and white photo, longbody, lowres, bad anatomy, bad hands, missing fingers, "
    "extra digit, fewer digits, cropped, worst quality, low quality"
)
DEFAULT_SAG_SCALE = 0.05  # the demo's slider default
DEFAULT_SAG_THRESHOLD = 600  # "1000 - SAG influence step": SAG where t > 600

StepCallback = Callable[["ControlColorPipeline", int, torch.Tensor, dict], "dict | None"]


@dataclass
class ColorizationOutput(BaseOutput):
    images: list  # PIL.Image.Image, RGB, each of the input's original size
    working_size: tuple  # (width, height) the model ran at
    original_size: tuple  # (width, height) of the input
    prompt: str  # the prompt as fed to the text encoder (added prompt included)
    negative_prompt: str | None  # None when no unconditional pass runs (autoguidance, none, CFG at 1)
    seed: int | None  # initial seed of the generator used, if one was given
    guidance: dict = field(default_factory=dict)  # {mode, scale} actually used
    sag_steps: int = 0  # denoising steps that ran self-attention guidance
    passes_per_image: float = 0.0  # UNet+ControlNet evaluations per output image (guide included)
    caption: str | None = None  # the BLIP caption used as the prompt (empty prompt, auto_caption on)
    parity: dict = field(default_factory=dict)  # the parity switches used
    denoising_steps: int = 0  # DDIM steps run (31 for 30 under parity timesteps "uniform")
    precision: str = ""  # the denoiser's dtype, e.g. "float16"
    timings: dict = field(default_factory=dict)  # seconds of the batch's steps: caption, denoise, decode


@dataclass
class ModelInputs:
    """Everything besides the noisy latent that one ControlNet + UNet pass needs, batched."""

    text: torch.Tensor  # (B, 77 or 78, D) text hidden states (+ the exemplar token)
    hint: torch.Tensor  # (B, 3, H, W) ControlNet hint in [0, 1], pixel resolution
    mask: torch.Tensor  # (B, 1, h, w) latent resolution; 1 = generate, 0 = stroke
    masked_latents: torch.Tensor  # (B, 4, h, w) VAE latent of the masked hint image

    @staticmethod
    def cat(first: "ModelInputs", second: "ModelInputs") -> "ModelInputs":
        return ModelInputs(*(torch.cat([a, b]) for a, b in zip(vars(first).values(), vars(second).values())))


def _cat_inputs(parts: list[ModelInputs]) -> ModelInputs:
    return parts[0] if len(parts) == 1 else ModelInputs(*(torch.cat(t) for t in zip(*(vars(p).values() for p in parts))))


def _files(required: list[tuple[str, ...]]) -> str:
    return ", ".join(alts[0] for alts in required)


class ControlColorPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "caption_model->text_encoder->image_encoder->controlnet->unet->vae"
    _optional_components = ["image_encoder", "deformable_vae", "guide_unet", "guide_controlnet", "caption_model",
                            "caption_processor"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: DDIMScheduler,
        image_encoder: CLIPVisionModel | None = None,
        deformable_vae: ContentGuidedVAE | None = None,
        guide_unet: UNet2DConditionModel | None = None,
        guide_controlnet: ControlNetModel | None = None,
        caption_model: BlipForConditionalGeneration | None = None,
        caption_processor: BlipProcessor | None = None,
        short_side: int = 512,
        max_long_side: int = 1536,
    ):
        super().__init__()
        if image_encoder is not None and image_encoder.config.hidden_size != text_encoder.config.hidden_size:
            raise ValueError(
                f"the exemplar token is appended to the text tokens without a projection (as in the official "
                f"design): image_encoder width {image_encoder.config.hidden_size} != text width "
                f"{text_encoder.config.hidden_size}")
        if (guide_unet is None) != (guide_controlnet is None):
            raise ValueError("the autoguidance guide is a (UNet, ControlNet) pair: pass both or neither")
        if (caption_model is None) != (caption_processor is None):
            raise ValueError("the captioner is a (BlipForConditionalGeneration, BlipProcessor) pair: pass both or neither")
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
            scheduler=scheduler, image_encoder=image_encoder, deformable_vae=deformable_vae,
            guide_unet=guide_unet, guide_controlnet=guide_controlnet, caption_model=caption_model,
            caption_processor=caption_processor,
        )
        # Working resolution: shorter side to `short_side` (512 as released; the tiny profile
        # uses 64 so latents are 8x8), long side capped (see lab.working_size).
        self.register_to_config(short_side=short_side, max_long_side=max_long_side)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # Files a loader found missing for optional features, named in the errors a request
        # for that feature gets (set by models.profiles for the pretrained profile).
        self.missing_optional: dict[str, list[str]] = {}
        self._passes = 0  # latent items evaluated by a UNet+ControlNet pair in this call

    # ------------------------------------------------------------------ capabilities

    @property
    def supports_exemplar(self) -> bool:
        return self.image_encoder is not None

    @property
    def supports_deformable_decoder(self) -> bool:
        return self.deformable_vae is not None

    @property
    def supports_autoguidance(self) -> bool:
        return self.guide_unet is not None and self.guide_controlnet is not None

    @property
    def supports_caption(self) -> bool:
        return self.caption_model is not None and self.caption_processor is not None

    def _missing(self, feature: str, default: str) -> str:
        names = self.missing_optional.get(feature)
        return ", ".join(names) if names else default

    # ------------------------------------------------------------------ inputs

    def working_size_for(self, image: Image.Image, parity: Parity | dict | str | None = None) -> tuple[int, int]:
        """(width, height) the model will run at for this image (under `parity`'s working-size
        rule); `mask` / `masked_hint` given to __call__ must have this size."""
        rule = Parity.parse(parity).working_size
        return working_size(image.width, image.height, self.config.short_side, self.config.max_long_side, rule)

    def timesteps_for(self, num_inference_steps: int, parity: Parity | dict | str | None = None) -> list[int]:
        """The DDIM timesteps a call runs, descending. "leading" (diffusers, steps_offset 1) and
        ldm's "uniform" agree when the step count divides the training steps; otherwise
        "uniform" runs range(0, T, T // S) + 1 (30 steps: 31 of them)."""
        if Parity.parse(parity).timesteps == "uniform":
            return uniform_timesteps(num_inference_steps, self.scheduler.config.num_train_timesteps)
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps]

    def set_timesteps(self, num_inference_steps: int, parity: Parity, device) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if parity.timesteps == "uniform":
            # DDIMScheduler.step takes the previous timestep as t - T // num_inference_steps, which
            # is ldm's spacing c too, and alphas_prev of the last step (t = 1) is alphas_cumprod[0]
            # in both (set_alpha_to_one False): only the list of timesteps differs.
            ts = uniform_timesteps(num_inference_steps, self.scheduler.config.num_train_timesteps)
            self.scheduler.timesteps = torch.tensor(ts, dtype=torch.long, device=device)
        return self.scheduler.timesteps

    def check_inputs(self, image, prompt, negative_prompt, num_inference_steps, guidance, guidance_scale, num_images,
                     generator, eta, mask, masked_hint, callback_on_step_end, strokes=None, stroke_image=None,
                     exemplar=None, sag_scale=DEFAULT_SAG_SCALE, sag_threshold=DEFAULT_SAG_THRESHOLD,
                     deformable_decoder=False, auto_caption=None, parity=None) -> GuidanceConfig:
        """Validate every argument before any model work; returns the guidance to use.
        Every error is a ValueError naming the argument (the worker turns it into a 422-like
        job error)."""
        if not isinstance(image, Image.Image):
            raise ValueError(f"`image` has to be a PIL.Image.Image (decode bytes with models.media.load_image), got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"`image` is empty ({image.width}x{image.height}); pass an image with pixels")
        if not isinstance(prompt, str):
            raise ValueError(f"`prompt` has to be a str, got {type(prompt).__name__}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"`negative_prompt` has to be a str or None (None = the default), got {type(negative_prompt).__name__}")
        max_steps = self.scheduler.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= max_steps:
            raise ValueError(f"`num_inference_steps` has to be an int in [1, {max_steps}], got {num_inference_steps!r}")
        if guidance_scale is not None:
            if guidance is not None:
                raise ValueError("pass `guidance` or the legacy `guidance_scale`, not both")
            if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
                raise ValueError(f"`guidance_scale` has to be a finite number >= 0 (1 disables CFG), got {guidance_scale!r}")
            g = GuidanceConfig("cfg", guidance_scale)
        else:
            g = GuidanceConfig.parse(guidance)  # ValueErrors name `guidance`
        if negative_prompt is not None and g.mode != "cfg":
            raise ValueError(f"`negative_prompt` has no effect with `guidance.mode` {g.mode!r} (it runs no unconditional "
                             "pass): leave it out, or use mode 'cfg'")
        if g.mode == "autoguidance" and not self.supports_autoguidance:
            raise ValueError(
                "`guidance.mode` 'autoguidance' needs a guide (UNet, ControlNet) pair and none is loaded: missing "
                + self._missing("autoguidance", "the guide dir (a diffusers folder with unet/ and controlnet/; "
                                                f"{_files(layout.GUIDE_REQUIRED)})"))
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"`num_images` has to be an int >= 1, got {num_images!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"`generator` has to be a torch.Generator or None, got {type(generator).__name__}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` has to be in [0, 1] (0 = deterministic DDIM), got {eta!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError("`callback_on_step_end` has to be callable(pipe, step_index, timestep, callback_kwargs)")
        if (mask is None) != (masked_hint is None):
            raise ValueError("`mask` and `masked_hint` go together: pass both (strokes) or neither (unconditional)")
        if mask is not None and (strokes or stroke_image is not None):
            raise ValueError("pass strokes as `strokes` / `stroke_image` or as precomputed `mask` + `masked_hint`, not both")
        if auto_caption is not None and not isinstance(auto_caption, bool):
            raise ValueError(f"`auto_caption` has to be a bool or None (None: caption when a captioner is loaded), "
                             f"got {type(auto_caption).__name__}")
        if auto_caption and not self.supports_caption:
            raise ValueError("`auto_caption` needs the BLIP captioner and none is loaded: missing "
                             + self._missing("caption", _files(layout.CAPTION_REQUIRED)) + "; or pass auto_caption=False")
        try:
            parity = Parity.parse(parity)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc) if "`parity" in str(exc) else f"`parity`: {exc}") from None
        if mask is not None:
            w, h = self.working_size_for(image, parity)
            for name, t, c, lo in (("mask", mask, 1, 0.0), ("masked_hint", masked_hint, 3, -1.0)):
                if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1:] != (c, h, w) or t.shape[0] not in (1, num_images):
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"`{name}` has to be a tensor of shape (1 or num_images, {c}, {h}, {w}) at the working size, got {got}")
                if t.min() < lo or t.max() > 1:
                    raise ValueError(f"`{name}` values have to be in [{lo:g}, 1]")
        if strokes is not None:
            try:  # format only: points outside the image are rendered clipped
                validate_strokes(strokes, image.width, image.height, check_bounds=False)
            except ValueError as exc:
                raise ValueError(f"`strokes`: {exc}") from None
        if stroke_image is not None and not isinstance(stroke_image, Image.Image):
            raise ValueError(f"`stroke_image` has to be a PIL.Image.Image (RGBA; alpha > 0 marks strokes), got {type(stroke_image).__name__}")
        if exemplar is not None:
            if not isinstance(exemplar, Image.Image):
                raise ValueError(f"`exemplar` has to be a PIL.Image.Image, got {type(exemplar).__name__}")
            if not self.supports_exemplar:
                raise ValueError(
                    "`exemplar` is not supported by this model: the exemplar encoder weights are missing ("
                    + self._missing("exemplar", _files(layout.EXEMPLAR_REQUIRED))
                    + f" under {layout.MODEL_DIR_ENV}); the released Control Color checkpoint was not trained "
                      "with the exemplar token")
        if isinstance(sag_scale, bool) or not isinstance(sag_scale, (int, float)) or not math.isfinite(sag_scale) or sag_scale < 0:
            raise ValueError(f"`sag_scale` has to be a finite number >= 0 (0 = off), got {sag_scale!r}")
        if isinstance(sag_threshold, bool) or not isinstance(sag_threshold, (int, float)) or not math.isfinite(sag_threshold):
            raise ValueError(f"`sag_threshold` has to be a finite number (SAG runs where timestep > it), got {sag_threshold!r}")
        if not isinstance(deformable_decoder, bool):
            raise ValueError(f"`deformable_decoder` has to be a bool, got {type(deformable_decoder).__name__}")
        if deformable_decoder and not self.supports_deformable_decoder:
            raise ValueError(
                "`deformable_decoder` is not available: the content-guided deformable VAE weights are missing ("
                + self._missing("deformable_decoder", _files(layout.DEFORMABLE_REQUIRED))
                + f" under {layout.MODEL_DIR_ENV}; convert them with convert_ctrlcolor(..., deformable_vae_ckpt=...))")
        return g

    def encode_prompt(self, prompt: str, device, num_images: int, extra_token: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP last hidden state, 77 tokens (padded, truncated), plus the exemplar token when
        given (78), repeated per output."""
        ids = self.tokenizer(
            [prompt], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        emb = self.text_encoder(ids)[0]
        if extra_token is not None:
            emb = torch.cat([emb, extra_token.to(device=emb.device, dtype=emb.dtype)], dim=1)
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
        self._passes += latents.shape[0]
        x = self.scheduler.scale_model_input(latents, t)
        down, mid = controlnet(
            x.to(controlnet.dtype), t, encoder_hidden_states=inputs.text.to(controlnet.dtype),
            controlnet_cond=inputs.hint.to(controlnet.dtype), conditioning_scale=controlnet_conditioning_scale,
            return_dict=False,
        )
        sample = torch.cat([x.to(unet.dtype), inputs.mask.to(unet.dtype), inputs.masked_latents.to(unet.dtype)], dim=1)
        eps = unet(
            sample, t, encoder_hidden_states=inputs.text.to(unet.dtype),
            down_block_additional_residuals=[d.to(unet.dtype) for d in down],
            mid_block_additional_residual=mid.to(unet.dtype), return_dict=False,
        )[0]
        return eps.float()

    def guided_noise(self, latents, t, guidance: GuidanceConfig, cond: ModelInputs, cfg_batch: ModelInputs | None = None,
                     attention: MidBlockAttention | None = None, controlnet_conditioning_scale: float = 1.0) -> torch.Tensor:
        """The guided eps for `guidance`. `cond` holds the conditional inputs (N items);
        `cfg_batch` the [uncond, cond] inputs (2N) CFG needs, run as one batch through the main
        pair; autoguidance runs the main pair then the guide pair on `cond`. With `attention`,
        the main UNet's mid-block attention map of this evaluation is kept (the batch's first N
        items: the unconditional half under CFG)."""
        kw = dict(controlnet_conditioning_scale=controlnet_conditioning_scale)
        capture = attention.capturing() if attention is not None else nullcontext()
        if guidance.mode == "cfg" and guidance.needs_second_pass:
            if cfg_batch is None:
                raise ValueError("CFG needs the [uncond, cond] inputs")
            with capture:
                eps = self.predict_noise(torch.cat([latents, latents]), t, cfg_batch, **kw)
            eps_uncond, eps_cond = split_cfg_batch(eps)
            return guidance.combine(eps_cond, eps_uncond)
        with capture:
            eps_main = self.predict_noise(latents, t, cond, **kw)
        if guidance.mode == "autoguidance" and guidance.needs_second_pass:
            eps_guide = self.predict_noise(latents, t, cond, unet=self.guide_unet, controlnet=self.guide_controlnet, **kw)
            return guidance.combine(eps_main, eps_guide)
        return eps_main

    def sag_step(self, latents, t, eps, guidance: GuidanceConfig, cond, cfg_batch, attention: MidBlockAttention,
                 sag_scale: float, controlnet_conditioning_scale: float = 1.0, groups: list[int] | None = None,
                 heads_rule: str = "all") -> torch.Tensor:
        """eps + s * (eps - eps(degraded x0)) -- see models.colorization.sag. `groups`: the
        images per request of the batch; the official heads rule mixes items within a request
        (as a lone official call would), never across requests."""
        n = latents.shape[0]
        groups = groups or [n]
        size, starts = tuple(latents.shape[-2:]), np.cumsum([0, *groups])
        mask = torch.cat([attention.mask(slice(int(a), int(b)), size, heads_rule) for a, b in zip(starts, starts[1:])])
        x0 = predicted_x0(latents, eps, self.scheduler.alphas_cumprod[int(t)])
        degraded = sag_degrade(x0, mask.to(latents.device))
        # fed at step t as is: no re-noising (the official streamlined variant)
        eps_degraded = self.guided_noise(degraded, t, guidance, cond, cfg_batch,
                                         controlnet_conditioning_scale=controlnet_conditioning_scale)
        return eps + sag_scale * (eps - eps_degraded)

    def decode_latents(self, latents: torch.Tensor, guide_z: torch.Tensor | None = None) -> np.ndarray:
        """Latents -> uint8 (N, H, W, 3), as the official `x * 127.5 + 127.5`, clipped. With
        `guide_z` the content-guided deformable VAE decodes (official: samples / scale_factor,
        then `vae_model.decode(samples, gray_content_z)`)."""
        z = latents / self.vae.config.scaling_factor
        if guide_z is None:
            x = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        else:
            x = self.deformable_vae.decode(z, guide_z)
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
        guidance: GuidanceConfig | dict | float | None = None,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        strokes: list[dict] | None = None,
        stroke_image: Image.Image | None = None,
        exemplar: Image.Image | None = None,
        sag_scale: float = DEFAULT_SAG_SCALE,
        sag_threshold: float = DEFAULT_SAG_THRESHOLD,
        deformable_decoder: bool = False,
        callback_on_step_end: StepCallback | None = None,
        *,
        auto_caption: bool | None = None,
        parity: Parity | dict | str | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        mask: torch.Tensor | None = None,
        masked_hint: torch.Tensor | None = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> ColorizationOutput:
        """Colorize `image`. Returns `num_images` RGB images of the input's size whose Lab L
        channel is the input's; all of them run as one batch.

        prompt: an empty (or blank) prompt is replaced by the BLIP caption of the input when
            `auto_caption` is on (None: on when a captioner is loaded), as the official demo.
        negative_prompt: CFG only (None: the demo's); refused with autoguidance and `none`.
        guidance: {mode: cfg|autoguidance|none, scale} (scale default per mode: CFG 7.0,
            autoguidance 2.0); a number = CFG scale; `guidance_scale` is the older spelling.
        strokes: vector strokes [{color: '#RRGGBB', width, points: [[x, y], ...]}] in input
            pixel coordinates; stroke_image: RGBA, alpha > 0 marks strokes (combinable).
        exemplar: a colour reference image (needs `supports_exemplar`).
        sag_scale / sag_threshold: streamlined SAG at steps with t > threshold (0 = off).
        deformable_decoder: decode with the content-guided deformable VAE.
        parity: "project" (default) | "official" | {sag_heads, working_size, timesteps}: see
            models.colorization.parity.
        mask / masked_hint: precomputed working-size stroke tensors (1 = generate; hint in
            [-1, 1] times (mask < 0.5)), instead of strokes.
        callback_on_step_end(pipe, step_index, timestep, {"latents": ...}) runs after every
        denoising step (SAG's extra passes are inside the step); an exception raised there
        propagates, which is how a job is canceled."""
        request = dict(image=image, prompt=prompt, negative_prompt=negative_prompt, num_images=num_images,
                       generator=generator, strokes=strokes, stroke_image=stroke_image, exemplar=exemplar,
                       mask=mask, masked_hint=masked_hint, auto_caption=auto_caption)
        return self.run_batch([request], num_inference_steps=num_inference_steps, guidance=guidance,
                              guidance_scale=guidance_scale, sag_scale=sag_scale, sag_threshold=sag_threshold,
                              deformable_decoder=deformable_decoder, callback_on_step_end=callback_on_step_end,
                              eta=eta, controlnet_conditioning_scale=controlnet_conditioning_scale, parity=parity)[0]

    def batch_key(self, width: int, height: int, *, steps: int, guidance, sag_scale: float, sag_threshold: float,
                  deformable_decoder: bool, exemplar: bool, parity=None) -> tuple:
        """Requests with equal keys can share one denoising batch (`run_batch`): the same working
        size (from the input's width x height) and the same per-step computation; prompts,
        captions, strokes, seeds and output counts may differ."""
        g, par = GuidanceConfig.parse(guidance), Parity.parse(parity)
        size = working_size(width, height, self.config.short_side, self.config.max_long_side, par.working_size)
        return (size, steps, g.mode, float(g.scale), float(sag_scale), float(sag_threshold), bool(deformable_decoder),
                bool(exemplar), tuple(par.as_dict().values()))

    def _clock(self, device) -> float:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)  # timings of GPU work, not of kernel launches
        return time.perf_counter()

    @torch.no_grad()
    def run_batch(self, requests: list[dict], *, num_inference_steps: int = 20, guidance=None,
                  guidance_scale: float | None = None, sag_scale: float = DEFAULT_SAG_SCALE,
                  sag_threshold: float = DEFAULT_SAG_THRESHOLD, deformable_decoder: bool = False,
                  callback_on_step_end: StepCallback | None = None, eta: float = 0.0,
                  controlnet_conditioning_scale: float = 1.0, parity=None) -> list[ColorizationOutput]:
        """Several independent requests (image, prompt, negative_prompt, num_images, generator,
        strokes, stroke_image, exemplar, mask, masked_hint, auto_caption: the per-request
        arguments of __call__) denoised as ONE batch: one ControlNet + UNet forward per step for
        all of them (their captions: one BLIP batch). Each request draws its noise, masked-hint
        and guide samples from its own generator in the same order as a lone call, so its seed
        gives the same images batched or not (up to float rounding). The requests must share
        `batch_key` (same working size and step settings). With eta > 0 the scheduler itself
        samples noise, so batches need eta 0."""
        if not requests:
            raise ValueError("`requests` is empty: pass at least one request")
        if len(requests) > 1 and eta:
            raise ValueError("`eta` has to be 0 for a batch of several requests (DDIM noise is per request)")
        device = self._execution_device
        self._passes = 0
        rs, g = [], None
        for r in requests:
            r = {"prompt": "", "negative_prompt": None, "num_images": 1, "generator": None, "strokes": None,
                 "stroke_image": None, "exemplar": None, "mask": None, "masked_hint": None, "auto_caption": None, **r}
            g = self.check_inputs(r["image"], r["prompt"], r["negative_prompt"], num_inference_steps, guidance,
                                  guidance_scale, r["num_images"], r["generator"], eta, r["mask"], r["masked_hint"],
                                  callback_on_step_end, r["strokes"], r["stroke_image"], r["exemplar"], sag_scale,
                                  sag_threshold, deformable_decoder, r["auto_caption"], parity)
            rs.append(r)
        par = Parity.parse(parity)
        timings = {}
        prepared = [prepare_input(r["image"], self.config.short_side, self.config.max_long_side, par.working_size,
                                  par.gray_input) for r in rs]
        began = self._clock(device)
        captions = self._captions(rs, prepared)
        timings["caption"] = self._clock(device) - began
        for p in prepared:
            p.l3_original = None  # only the caption needed it (3 bytes per input pixel)
        items = [self._prepare_request(r, p, c, g, device) for r, p, c in zip(rs, prepared, captions)]
        sizes = {it["prepared"].working_size for it in items}
        tokens = {it["cond"].text.shape[1] for it in items}
        if len(sizes) > 1 or len(tokens) > 1:
            raise ValueError("`requests` do not share one working size and exemplar use; group them by `batch_key`")

        latents = torch.cat([it["latents"] for it in items])
        cond = _cat_inputs([it["cond"] for it in items])
        cfg_batch = None
        if g.mode == "cfg" and g.needs_second_pass:  # the official sampler skips the uncond pass at scale 1
            uncond = _cat_inputs([ModelInputs(it["uncond_text"], it["cond"].hint, it["cond"].mask,
                                              it["cond"].masked_latents) for it in items])
            cfg_batch = ModelInputs.cat(uncond, cond)

        timesteps = self.set_timesteps(num_inference_steps, par, device)
        sag_at = [sag_scale > 0 and int(t) > sag_threshold for t in timesteps.tolist()]
        kw = dict(controlnet_conditioning_scale=controlnet_conditioning_scale)
        groups = [it["num_images"] for it in items]
        generator = requests[0].get("generator") if len(requests) == 1 else None
        began = self._clock(device)
        with (MidBlockAttention(self.unet) if any(sag_at) else nullcontext()) as attention, \
                self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                eps = self.guided_noise(latents, t, g, cond, cfg_batch, attention if sag_at[i] else None, **kw)
                if sag_at[i]:
                    eps = self.sag_step(latents, t, eps, g, cond, cfg_batch, attention, sag_scale, groups=groups,
                                        heads_rule=par.sag_heads, **kw)
                latents = self.scheduler.step(eps, t, latents, eta=eta, generator=generator, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    if out:
                        latents = out.get("latents", latents)
                bar.update()
        timings["denoise"] = self._clock(device) - began

        began = self._clock(device)
        outputs, start = [], 0
        total_images = latents.shape[0]
        for it in items:
            n = it["num_images"]
            guide_z = None
            if deformable_decoder:
                # the resized L image in [0, 1] (the ControlNet hint), through the deformable VAE's
                # own encoder, sampled (official get_gray_content_z); one sample shared by the
                # request's outputs (the official decoder only works for batch 1)
                l_image = torch.from_numpy(it["prepared"].hint).permute(2, 0, 1)[None]
                guide_z = self.deformable_vae.encode_guide(l_image, it["generator"])
            decoded = self.decode_latents(latents[start:start + n], guide_z)
            start += n
            outputs.append(ColorizationOutput(
                images=[Image.fromarray(replace_l(x, it["prepared"].l_original, gamut_fit=par.l_merge == "gamut_fit"))
                        for x in decoded],
                working_size=it["prepared"].working_size,
                original_size=it["prepared"].original_size,
                prompt=it["prompt"],
                negative_prompt=it["negative_prompt"],
                seed=it["generator"].initial_seed() if it["generator"] is not None else None,
                guidance=g.as_dict(),
                sag_steps=sum(sag_at),
                passes_per_image=self._passes / total_images,
                caption=it["caption"],
                parity=par.as_dict(),
                denoising_steps=len(timesteps),
                precision=str(self.unet.dtype).removeprefix("torch."),
                timings=timings,
            ))
        timings["decode"] = self._clock(device) - began
        self.maybe_free_model_hooks()
        return outputs

    def _captions(self, requests: list[dict], prepared: list[PreparedInput]) -> list[str | None]:
        """The BLIP caption of each request whose prompt is empty and auto_caption on (None:
        on when a captioner is loaded), as one batch; None for the others. The official demo
        captions when `len(prompt) == 0`; a blank prompt counts as empty here."""
        wanted = [i for i, r in enumerate(requests) if not r["prompt"].strip()
                  and (r["auto_caption"] if r["auto_caption"] is not None else self.supports_caption)]
        captions: list[str | None] = [None] * len(requests)
        texts = caption_images(self.caption_model, self.caption_processor,
                               [caption_input(prepared[i].l3_original) for i in wanted]) if wanted else []
        for i, text in zip(wanted, texts):
            captions[i] = text
        return captions

    def _prepare_request(self, r: dict, prepared: PreparedInput, caption: str | None, g: GuidanceConfig,
                         device) -> dict:
        """Per-request inputs, drawing from its generator in a fixed order: initial noise, then
        the masked-hint latent sample (then, after denoising, the deformable guide sample)."""
        prompt = caption if caption is not None else r["prompt"]
        # official: prompt + ', ' + a_prompt; an empty prompt gets a_prompt alone (no leading comma)
        full_prompt = f"{prompt}, {ADDED_PROMPT}" if prompt.strip() else ADDED_PROMPT
        negative_prompt = DEFAULT_NEGATIVE_PROMPT if r["negative_prompt"] is None else r["negative_prompt"]
        w, h = prepared.working_size
        n, generator = r["num_images"], r["generator"]
        shape = (n, self.unet.config.out_channels, h // self.vae_scale_factor, w // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents * self.scheduler.init_noise_sigma
        mask, masked_hint = r["mask"], r["masked_hint"]
        if r["strokes"] or r["stroke_image"] is not None:
            mask, masked_hint = build_stroke_hint(prepared, r["strokes"], r["stroke_image"]).to_tensors()
        # Exemplar: one token appended to both branches' text tokens. The official dual
        # embedder encodes (text, image) pairs for every branch and its demo code builds one
        # reference image per request, so the unconditional branch gets the negative prompt
        # plus the same exemplar token: CFG then guides on the text only, the exemplar
        # conditions both sides. Without an exemplar we feed the 77 text tokens (the released
        # checkpoint's single-embedder path); the official dual embedder would append the token
        # of a black reference image instead -- a named deviation, only relevant to
        # exemplar-trained weights.
        token = encode_exemplar(self.image_encoder, r["exemplar"]).to(device) if r["exemplar"] is not None else None
        cond = self.prepare_model_inputs(prepared, self.encode_prompt(full_prompt, device, n, token),
                                         mask, masked_hint, generator)
        uncond_text = None
        if g.mode == "cfg" and g.needs_second_pass:
            uncond_text = self.encode_prompt(negative_prompt, device, n, token).to(cond.text.dtype)
        return dict(prepared=prepared, latents=latents, cond=cond, uncond_text=uncond_text, num_images=n,
                    generator=generator, prompt=full_prompt, caption=caption,
                    negative_prompt=negative_prompt if uncond_text is not None else None)
