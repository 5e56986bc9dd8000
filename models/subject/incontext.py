"""In-context subject-driven generation (no tuning): BLIP-Diffusion (Li et al., 2023).

    pipe = load_subject_incontext("tiny")
    out = pipe("swimming underwater", subject_images=[dog1, dog2, dog3], subject_class="dog",
               generator=torch.Generator().manual_seed(0))
    out.images[0]

The recipe (LAVIS `BlipDiffusion.generate`, diffusers `BlipDiffusionPipeline`):
1. Subject embedding: the Q-Former reads each photo with the subject class as text; its
   num_query_tokens outputs (16 in the release), projected to the CLIP token-embedding width.
2. Prompt: "a {target class} {prompt}", repeated `prompt_reps` (20) times joined by ", ",
   tokenized to 77 - num_query_tokens tokens.
3. The subject embedding is spliced into the text encoder's input token embeddings at
   positions ctx_begin_pos .. ctx_begin_pos + Q - 1 (2..17 released: right after BOS and "a",
   before the class word), the whole 77-long sequence then runs the causal CLIP text tower.
4. CFG against the negative prompt encoded without any subject (guidance 7.5), PNDM, 50 steps.

DEVIATION (named), several photos: the single-image recipe takes one reference photo. With
several, each photo is encoded on its own and the subject embeddings (after the projection)
are averaged, weighted by `subject_weights` (uniform by default, normalised to sum 1). This is
the arithmetic of LAVIS's multi-input path (`forward_ctx_embeddings(..., ratio)`, built there to
blend subjects); one photo gives the official embedding exactly.

Reference photos go through LAVIS's input transform (bicubic Resize(224) of the short side +
CenterCrop(224) + CLIP normalisation); diffusers' processor resizes to 224x224 and so would
stretch a non-square photo.

`callback_on_step_end(pipe, step_index, timestep, {"latents": ...})` runs after every
denoising step and may return {"latents": ...}; an exception raised there propagates, which
is how a job is canceled within one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler, UNet2DConditionModel
from diffusers.pipelines.deprecated.blip_diffusion import BlipImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTokenizer

from models.guidance import cfg
from models.subject import checks
from models.subject.blip import SubjectQFormer, SubjectTextEncoder
from models.subject.images import MAX_SUBJECT_IMAGES, as_pil_list, resize_center_crop, to_tensor

StepCallback = Callable[["InContextSubjectPipeline", int, torch.Tensor, dict], "dict | None"]

NUM_INFERENCE_STEPS = 50
GUIDANCE_SCALE = 7.5
PROMPT_REPS = 20
CTX_BEGIN_POS = 2
MAX_OUTPUTS = 8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the negative prompt of the BLIP-Diffusion examples (the pipeline's own default is "")
DEMO_NEGATIVE_PROMPT = ("over-exposure, under-exposure, saturated, duplicate, out of frame, lowres, cropped, worst "
                        "quality, low quality, jpeg artifacts, morbid, mutilated, out of frame, ugly, bad anatomy, "
                        "bad proportions, deformed, blurry, duplicate")


@dataclass
class SubjectEmbedding(BaseOutput):
    embeds: torch.Tensor  # (1, Q, D): what the text encoder receives
    per_image: torch.Tensor  # (N, Q, D): one per subject photo
    weights: list  # N floats summing to 1


@dataclass
class InContextOutput(BaseOutput):
    images: list  # PIL images, or np (N, H, W, 3) float in [0, 1] / pt (N, 3, H, W) for output_type np / pt
    prompt: str  # the built prompt, before truncation to the text encoder's length
    subject: SubjectEmbedding


class InContextSubjectPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "qformer->text_encoder->unet->vae"

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: SubjectTextEncoder, vae: AutoencoderKL,
                 unet: UNet2DConditionModel, scheduler: PNDMScheduler, qformer: SubjectQFormer,
                 image_processor: BlipImageProcessor, ctx_begin_pos: int = CTX_BEGIN_POS, mean=None, std=None,
                 default_size: int = 512):
        super().__init__()
        # diffusers' modules work as they are: the subclasses only replace forward (see blip.py)
        text_encoder, qformer = SubjectTextEncoder.adopt(text_encoder), SubjectQFormer.adopt(qformer)
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet, scheduler=scheduler,
                              qformer=qformer, image_processor=image_processor)
        self.register_to_config(ctx_begin_pos=ctx_begin_pos, mean=list(mean or CLIP_MEAN), std=list(std or CLIP_STD),
                                default_size=default_size)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        for module in (text_encoder, vae, unet, qformer):
            module.requires_grad_(False).eval()

    @property
    def num_query_tokens(self) -> int:
        return self.qformer.num_query_tokens

    @property
    def context_positions(self) -> range:
        """Where the subject embedding sits in the text encoder's input sequence."""
        return range(self.config.ctx_begin_pos, self.config.ctx_begin_pos + self.num_query_tokens)

    # ------------------------------------------------------------------ subject

    @property
    def subject_image_size(self) -> int:
        return int(self.image_processor.size["height"])

    def prepare_subject_images(self, images) -> torch.Tensor:
        """Photos -> normalised pixels (N, 3, S, S), LAVIS's BLIP-Diffusion input transform:
        bicubic resize of the short side to S, center crop S, CLIP mean/std."""
        s = self.subject_image_size
        crops = [resize_center_crop(im, s, s, Image.BICUBIC)
                 for im in as_pil_list(images, "subject_images", MAX_SUBJECT_IMAGES)]
        return to_tensor(crops, self.config.mean, self.config.std).to(self._execution_device, self.qformer.dtype)

    @torch.no_grad()
    def encode_subject(self, subject_images, subject_class: str, subject_weights=None) -> SubjectEmbedding:
        """The subject embedding of 1..8 photos of one subject (see the module docstring for
        how several are combined)."""
        checks.check_text("subject_class", subject_class, max_chars=100)
        px = self.prepare_subject_images(subject_images)
        n = px.shape[0]
        if subject_weights is None:
            weights = [1.0 / n] * n
        else:
            if not isinstance(subject_weights, (list, tuple)) or len(subject_weights) != n:
                raise ValueError(f"`subject_weights` needs one number per subject image ({n})")
            raw = [checks.check_number(f"subject_weights[{i}]", w, 0.0) for i, w in enumerate(subject_weights)]
            if sum(raw) <= 0:
                raise ValueError("`subject_weights` sum to 0: give at least one positive weight")
            weights = [w / sum(raw) for w in raw]
        per_image = self.qformer(px, [subject_class] * n)
        w = torch.tensor(weights, dtype=per_image.dtype, device=per_image.device).view(n, 1, 1)
        return SubjectEmbedding(embeds=(per_image * w).sum(0, keepdim=True), per_image=per_image, weights=weights)

    # ------------------------------------------------------------------ text

    @staticmethod
    def build_prompt(prompt: str, target_class: str, prompt_strength: float = 1.0, prompt_reps: int = PROMPT_REPS) -> str:
        """BLIP-Diffusion's prompt amplification: "a {class} {prompt}", repeated and joined."""
        one = f"a {target_class} {prompt.strip()}"
        return ", ".join([one] * int(prompt_strength * prompt_reps))

    @torch.no_grad()
    def encode_prompt(self, text: str, subject_embeds: torch.Tensor) -> torch.Tensor:
        """(1, 77, D) text encoder states with the subject spliced in at `context_positions`."""
        max_len = self.text_encoder.config.max_position_embeddings - self.num_query_tokens
        ids = self.tokenizer([text], padding="max_length", truncation=True, max_length=max_len,
                             return_tensors="pt").input_ids.to(self._execution_device)
        return self.text_encoder(input_ids=ids, ctx_embeddings=subject_embeds,
                                 ctx_begin_pos=[self.config.ctx_begin_pos])[0]

    @torch.no_grad()
    def encode_negative(self, negative_prompt: str) -> torch.Tensor:
        """(1, 77, D) for the unconditional branch: no subject (as the official)."""
        ids = self.tokenizer([negative_prompt], padding="max_length", truncation=True,
                             max_length=self.text_encoder.config.max_position_embeddings,
                             return_tensors="pt").input_ids.to(self._execution_device)
        return self.text_encoder(input_ids=ids)[0]

    # ------------------------------------------------------------------ generation

    def check_inputs(self, prompt, subject_class, target_class, negative_prompt, num_images, num_inference_steps,
                     guidance_scale, height, width, prompt_strength, prompt_reps, generator, output_type, callback):
        checks.check_text("prompt", prompt)
        checks.check_text("subject_class", subject_class, max_chars=100)
        if target_class is not None:
            checks.check_text("target_class", target_class, max_chars=100)
        checks.check_text("negative_prompt", negative_prompt, allow_empty=True)
        checks.check_int("num_images", num_images, 1, MAX_OUTPUTS)
        checks.check_int("num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps)
        checks.check_number("guidance_scale", guidance_scale, 0.0, 50.0)
        checks.check_size("height", height, self.vae_scale_factor)
        checks.check_size("width", width, self.vae_scale_factor)
        checks.check_number("prompt_strength", prompt_strength, 0.0, 10.0, low_open=True)
        checks.check_int("prompt_reps", prompt_reps, 1, 100)
        if int(prompt_strength * prompt_reps) < 1:
            raise ValueError("`prompt_strength` x `prompt_reps` has to be at least 1 (the prompt is repeated that often)")
        checks.check_generator(generator, num_images)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` has to be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        checks.check_callback(callback)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        subject_images=None,
        subject_class: str = "",
        target_class: str | None = None,
        negative_prompt: str = "",
        num_images: int = 1,
        num_inference_steps: int = NUM_INFERENCE_STEPS,
        guidance_scale: float = GUIDANCE_SCALE,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        subject_weights=None,
        subject: SubjectEmbedding | None = None,
        prompt_strength: float = 1.0,
        prompt_reps: int = PROMPT_REPS,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
    ) -> InContextOutput:
        """`num_images` images of the subject in `prompt`'s scene. `target_class` (default:
        the subject class) names the subject in the prompt. A precomputed `subject` (from
        `encode_subject`) skips the photos. With a list of generators, one per image, image k
        does not depend on how many images are asked for."""
        height = height or self.config.default_size
        width = width or self.config.default_size
        self.check_inputs(prompt, subject_class, target_class, negative_prompt, num_images, num_inference_steps,
                          guidance_scale, height, width, prompt_strength, prompt_reps, generator, output_type,
                          callback_on_step_end)
        if subject is None:
            if subject_images is None:
                raise ValueError("`subject_images` is missing: give 1-8 photos of the subject (or a precomputed `subject`)")
            subject = self.encode_subject(subject_images, subject_class, subject_weights)
        device = self._execution_device
        text = self.build_prompt(prompt, target_class or subject_class, prompt_strength, prompt_reps)
        cond = self.encode_prompt(text, subject.embeds.to(device))
        use_cfg = guidance_scale > 1.0  # as the official: scale <= 1 samples the conditional branch only
        embeds = torch.cat([self.encode_negative(negative_prompt), cond]) if use_cfg else cond
        embeds = embeds.to(self.unet.dtype).repeat_interleave(num_images, dim=0)

        shape = (num_images, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` have to be {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device, self.unet.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        with self.progress_bar(total=len(self.scheduler.timesteps)) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                x = torch.cat([latents, latents]) if use_cfg else latents
                x = self.scheduler.scale_model_input(x, t)
                eps = self.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
                if use_cfg:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = cfg(eps_uncond, eps_cond, guidance_scale)
                latents = self.scheduler.step(eps, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    if out:
                        latents = out.get("latents", latents)
                bar.update()
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        return InContextOutput(images=images, prompt=text, subject=subject)
