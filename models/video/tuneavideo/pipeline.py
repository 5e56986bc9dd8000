"""Tune-A-Video as a diffusers pipeline: one-shot tuning, DDIM inversion, editing.

    pipe.tune(frames, "a man is skiing")           fine-tunes the inflated UNet on the clip
    pipe.export_tuned(clip={...})                  the small artifact (trained params + JSON)
    latents = pipe.encode_video(frames, gen)       VAE sample x 0.18215
    inverted = pipe.invert(latents)                DDIM inversion, 50 steps, "" prompt, no CFG
    out = pipe.edit(["spider man is skiing"], inverted)   DDIM 50 steps, CFG 12.5, per prompt

Later edits of the same clip: `pipe.load_tuned(artifact)` instead of `tune`. Tuning always
starts from the base weights (a snapshot of the trainable parameters taken at construction),
so a warm pipeline reused across jobs never carries one job's tuning into the next.

Every loop calls `callback_on_step_end(pipe, step_index, timestep, kwargs)` after each step;
an exception raised there propagates (that is how a job is canceled within one step).

Prediction types: epsilon (SD 1.x, SD 2.x-base) and v_prediction (SD 2.x-768) follow the
scheduler's `prediction_type` in tuning (the official train_tuneavideo.py target: noise, or
`get_velocity(latents, noise, t)`), inversion and sampling; "sample" models are refused.
`compile_denoiser()` torch.compiles the inflated UNet that inversion and sampling run; tuning
keeps the eager module (same parameters), so a tuning job works with compile on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from models.guidance import cfg, split_cfg_batch
from models.video.tuneavideo.artifact import TunedArtifact, apply_tuned, export_tuned
from models.video.tuneavideo.inflate import VideoUNet, trainable_parameters

StepCallback = Callable[["TuneAVideoPipeline", int, torch.Tensor, dict], "dict | None"]

# Official configs (configs/*.yaml, train_tuneavideo.py defaults).
TUNE_STEPS = 500
LEARNING_RATE = 3e-5
WEIGHT_DECAY = 1e-2
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
MAX_GRAD_NORM = 1.0  # accelerator.clip_grad_norm_(unet.parameters(), max_grad_norm)
INVERSION_STEPS = 50
SAMPLING_STEPS = 50
GUIDANCE_SCALE = 12.5
VAE_CHUNK = 8  # frames per VAE call; the VAE is per image, so chunking changes nothing but memory
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class TuneOutput(BaseOutput):
    losses: list  # float per step (the step's epsilon MSE, before its update)
    steps: int
    seconds: float


@dataclass
class EditOutput(BaseOutput):
    videos: list  # per prompt: uint8 np.ndarray (F, H, W, 3), or latents (1, 4, F, h, w) for output_type="latent"
    prompts: list


def ddim_inversion_step(eps: torch.Tensor, timestep: int, sample: torch.Tensor, scheduler: DDIMScheduler) -> torch.Tensor:
    """One DDIM inversion step (the official `next_step`): from the noise level just below
    `timestep` (the level `scheduler.step` at `timestep` lands on) up to `timestep`, with the
    deterministic DDIM update solved the other way round. With the same `eps` it is the exact
    inverse of `scheduler.step(eps, timestep, ., eta=0)`."""
    t = int(timestep)
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    alpha_t = scheduler.alphas_cumprod[t]
    x0 = (sample - (1 - alpha_prev) ** 0.5 * eps) / alpha_prev**0.5
    return alpha_t**0.5 * x0 + (1 - alpha_t) ** 0.5 * eps


class TuneAVideoPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        base_model_id: str = "unknown",
        default_frames: int = 24,
        default_width: int = 512,
        default_height: int = 512,
        inflate_seed: int = 0,
    ):
        super().__init__()
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"scheduler `prediction_type` {prediction!r} is not supported: Tune-A-Video here tunes, "
                             f"inverts and samples {' and '.join(PREDICTION_TYPES)} models (SD 1.x / 2.x)")
        # Inflates `unet` in place (no-op when it already is); `video_unet` runs it on clips.
        self.video_unet = VideoUNet(unet, seed=inflate_seed)
        self.compiled_unet = None  # set by compile_denoiser(): what inversion and sampling run
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(base_model_id=base_model_id, default_frames=default_frames,
                                default_width=default_width, default_height=default_height)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        for module in (vae, text_encoder, unet):
            module.requires_grad_(False)
        # Base values of what tuning changes (on CPU): restored before every tune().
        self._base_trainable = {n: p.detach().to("cpu", copy=True) for n, p in trainable_parameters(unet).items()}

    @property
    def base_model_id(self) -> str:
        return self.config.base_model_id

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.get("prediction_type", "epsilon")

    def compile_denoiser(self, **compile_kwargs) -> str:
        """torch.compile the inflated UNet for inversion and sampling (`predict_noise`); tuning
        keeps running the eager `video_unet` (the compiled module shares its parameters, so
        tuned weights are what it computes with). Returns the name of what was compiled."""
        self.compiled_unet = torch.compile(self.video_unet, **compile_kwargs)
        return "video_unet"

    # ------------------------------------------------------------------ inputs

    def prepare_video(self, video) -> torch.Tensor:
        """uint8 (F, H, W, 3) array, list of PIL images, or float tensor (F, 3, H, W) in
        [-1, 1] -> float32 (F, 3, H, W) in [-1, 1] (the official `video / 127.5 - 1`)."""
        if isinstance(video, (list, tuple)) and video and isinstance(video[0], Image.Image):
            video = np.stack([np.asarray(im.convert("RGB")) for im in video])
        if isinstance(video, np.ndarray):
            if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
                raise ValueError(f"a video array has to be uint8 (F, H, W, 3), got {video.dtype} {video.shape}")
            x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        elif isinstance(video, torch.Tensor):
            if video.ndim != 4 or video.shape[1] != 3:
                raise ValueError(f"a video tensor has to be (F, 3, H, W) in [-1, 1], got {tuple(video.shape)}")
            x = video.float()
        else:
            raise ValueError(f"video has to be a uint8 array, a list of PIL images or a tensor, got {type(video).__name__}")
        f, _, h, w = x.shape
        if f < 1:
            raise ValueError("the video has no frames")
        if h % self.vae_scale_factor or w % self.vae_scale_factor:
            raise ValueError(f"frame size {w}x{h} has to be a multiple of {self.vae_scale_factor}")
        return x

    def encode_prompt(self, prompt: str, device=None) -> torch.Tensor:
        """CLIP last hidden state (1, 77, D): padded to max length, truncated."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt has to be a str, got {type(prompt).__name__}")
        device = device or self._execution_device
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        return self.text_encoder(ids)[0].to(self.unet.dtype)

    @torch.no_grad()
    def encode_posterior(self, video) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of a clip, each float32 (1, 4, F, h, w)."""
        x = self.prepare_video(video).to(self._execution_device, self.vae.dtype)
        means, stds = [], []
        for chunk in x.split(VAE_CHUNK):
            dist = self.vae.encode(chunk).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        to_video = lambda t: torch.cat(t).transpose(0, 1).unsqueeze(0)  # (F, 4, h, w) -> (1, 4, F, h, w)
        return to_video(means), to_video(stds)

    def sample_latents(self, posterior, generator=None) -> torch.Tensor:
        """A VAE sample x scaling factor (0.18215 for SD 1.x)."""
        mean, std = posterior
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * self.vae.config.scaling_factor

    def encode_video(self, video, generator: torch.Generator | None = None) -> torch.Tensor:
        """The clip's latents as the official code feeds them to tuning and inversion:
        `vae.encode(frames).latent_dist.sample() * 0.18215`, float32 (1, 4, F, h, w)."""
        return self.sample_latents(self.encode_posterior(video), generator)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """(B, 4, F, h, w) -> uint8 (B, F, H, W, 3) (the official `(x / 2 + 0.5).clamp(0, 1)`)."""
        b, _, f = latents.shape[:3]
        z = latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor
        frames = [self.vae.decode(c.to(self.vae.dtype), return_dict=False)[0] for c in z.split(VAE_CHUNK)]
        x = (torch.cat(frames).float() * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
        return x.permute(0, 2, 3, 1).reshape(b, f, *x.shape[2:], 3).cpu().numpy()

    @staticmethod
    def _check_steps(name: str, n, max_steps: int):
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_steps:
            raise ValueError(f"`{name}` has to be an int in [1, {max_steps}], got {n!r}")

    @staticmethod
    def _check_callback(callback):
        if callback is not None and not callable(callback):
            raise ValueError("`callback_on_step_end` has to be callable(pipe, step_index, timestep, callback_kwargs)")

    # ------------------------------------------------------------------ tuning

    def reset_tuning(self) -> None:
        """Put the trainable parameters back to the base model's values."""
        params = trainable_parameters(self.unet)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self._base_trainable[name].to(device=p.device, dtype=p.dtype))

    def export_tuned(self, clip: dict | None = None, **extra) -> TunedArtifact:
        """The artifact of the current tuning: trained parameters + base model id + `clip`."""
        return export_tuned(self.unet, self.base_model_id, clip, **extra)

    def load_tuned(self, artifact: TunedArtifact) -> None:
        """Load a tuned artifact (made on this base model) into the UNet."""
        apply_tuned(self.unet, artifact, base_model=self.base_model_id)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet regresses, by the scheduler's prediction type (train_tuneavideo.py:
        `noise` for epsilon, `noise_scheduler.get_velocity(latents, noise, timesteps)` for
        v_prediction)."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def denoising_loss(self, latents, text, timesteps, noise) -> torch.Tensor:
        """The training objective: MSE between the UNet's prediction on add_noise(latents,
        noise, t) and `training_target` (epsilon or v), averaged over the given timesteps."""
        losses = []
        for t, n in zip(timesteps, noise):
            t = torch.as_tensor(t, device=latents.device).reshape(1)
            noisy = self.scheduler.add_noise(latents, n, t)
            pred = self.video_unet(noisy.to(self.unet.dtype), t, text)
            losses.append(F.mse_loss(pred.float(), self.training_target(latents, n, t).float()))
        return torch.stack(losses).mean()

    def tune(
        self,
        video,
        prompt: str,
        num_steps: int = TUNE_STEPS,
        learning_rate: float = LEARNING_RATE,
        weight_decay: float = WEIGHT_DECAY,
        max_grad_norm: float = MAX_GRAD_NORM,
        generator: torch.Generator | None = None,
        mixed_precision: bool | None = None,
        gradient_checkpointing: bool | None = None,
        callback_on_step_end: StepCallback | None = None,
    ) -> TuneOutput:
        """One-shot tuning on `video` described by `prompt` (batch 1, as the official).

        Each step: a fresh VAE posterior sample of the clip (x 0.18215; the official code
        re-runs the encoder every step for it, here the posterior is encoded once and only
        sampled per step: the same distribution, without 500 encoder passes), noise, a timestep
        uniform in [0, 1000), MSE to the epsilon or v target, AdamW on the trainable parameters only, gradient
        norm clipped to 1. `mixed_precision` / `gradient_checkpointing` default to on for
        CUDA (the official fp16 + checkpointing), off elsewhere. Starts from the base weights.
        `callback_on_step_end(pipe, step, timestep, {"loss": tensor})` after every update."""
        self._check_steps("num_steps", num_steps, 100_000)
        self._check_callback(callback_on_step_end)
        if not (isinstance(learning_rate, (int, float)) and learning_rate > 0 and math.isfinite(learning_rate)):
            raise ValueError(f"`learning_rate` has to be a finite number > 0, got {learning_rate!r}")
        device = self._execution_device
        cuda = device.type == "cuda"
        mixed_precision = cuda if mixed_precision is None else mixed_precision
        gradient_checkpointing = cuda if gradient_checkpointing is None else gradient_checkpointing
        unet, model_dtype = self.unet, self.unet.dtype
        if mixed_precision and not cuda:
            raise ValueError("mixed precision tuning needs CUDA; on the CPU tune in float32")
        if not mixed_precision and model_dtype != torch.float32:
            raise ValueError(f"the UNet is {model_dtype}: tune with mixed_precision=True (fp32 master weights) or load float32")

        self.reset_tuning()
        posterior = self.encode_posterior(video)
        with torch.no_grad():
            text = self.encode_prompt(prompt, device)
        params = trainable_parameters(unet)
        start = time.perf_counter()

        # Mixed precision as accelerate's fp16 mode: trained parameters (and so AdamW's
        # state) in float32, the forward under autocast, the loss scaled against fp16
        # gradient underflow. Frozen weights stay in the pipeline's dtype. Deviation: the
        # official keeps the frozen UNet weights in fp32 too; autocast computes in fp16
        # either way, so only their storage differs (half the memory).
        amp_dtype = None
        if mixed_precision:
            amp_dtype = model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.float16
            for p in params.values():
                p.data = p.data.float()
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(list(params.values()), lr=learning_rate, betas=ADAM_BETAS,
                                      weight_decay=weight_decay, eps=ADAM_EPS)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        num_train = self.scheduler.config.num_train_timesteps
        gen_device = generator.device if generator is not None else torch.device("cpu")
        losses: list[float] = []
        try:
            with self.progress_bar(total=num_steps) as bar:
                for step in range(num_steps):
                    latents = self.sample_latents(posterior, generator)
                    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=torch.float32)
                    t = torch.randint(0, num_train, (1,), generator=generator, device=gen_device).to(device)
                    noisy = self.scheduler.add_noise(latents, noise, t)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        pred = self.video_unet(noisy if amp_dtype else noisy.to(model_dtype), t, text)
                    loss = F.mse_loss(pred.float(), self.training_target(latents, noise, t).float())
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss.detach()
                    losses.append(float(loss))
                    if callback_on_step_end is not None:
                        callback_on_step_end(self, step, t, {"loss": loss})
                    bar.update()
        finally:
            unet.eval()
            if gradient_checkpointing:
                unet.disable_gradient_checkpointing()
            for p in params.values():
                p.requires_grad_(False)
                p.grad = None
                if p.dtype != model_dtype:
                    p.data = p.data.to(model_dtype)
            del optimizer
        return TuneOutput(losses=losses, steps=len(losses), seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ inversion and sampling

    def _check_latents(self, latents):
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != self.unet.config.in_channels:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents have to be (B, {self.unet.config.in_channels}, F, h, w), got {got}")

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, num_inference_steps: int = INVERSION_STEPS, prompt: str = "",
               callback_on_step_end: StepCallback | None = None) -> torch.Tensor:
        """DDIM inversion of clean latents (the official `ddim_inversion`): the empty prompt's
        embedding, no CFG, timesteps walked upwards (1, 21, ..., 981 for 50 steps), each step
        using the UNet's epsilon at the current latent. Returns the latent at the last
        timestep, float32, the start of `edit`.
        `callback_on_step_end(pipe, i, t, {"latents": ...})` may return {"latents": ...}."""
        self._check_latents(latents)
        self._check_steps("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        self._check_callback(callback_on_step_end)
        device = self._execution_device
        text = self.encode_prompt(prompt, device).expand(latents.shape[0], -1, -1)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = latents.to(device, torch.float32)
        timesteps = self.scheduler.timesteps.flip(0)
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                eps = self.epsilon(self.predict_noise(x, t, text), x, t)
                x = ddim_inversion_step(eps, t, x, self.scheduler)
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": x})
                    if out:
                        x = out.get("latents", x)
                bar.update()
        return x

    def epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, t) -> torch.Tensor:
        """The model output as epsilon. v_prediction: eps = sqrt(a_t) v + sqrt(1 - a_t) x with
        a_t of the timestep the UNet was given, so a v model inverts exactly as the epsilon model
        it is equivalent to. (The official util.py `next_step` takes the output as epsilon as is;
        diffusers' DDIMInverseScheduler converts with the alpha of the sample's level instead.)"""
        if self.prediction_type != "v_prediction":
            return model_output
        a = self.scheduler.alphas_cumprod[int(t)].to(device=sample.device, dtype=sample.dtype)
        return a.sqrt() * model_output + (1 - a).sqrt() * sample

    def predict_noise(self, latents, t, text, unet: VideoUNet | None = None) -> torch.Tensor:
        """The UNet's output (epsilon or v, see `prediction_type`); by default the compiled
        inflated UNet when `compile_denoiser` ran, else the eager one."""
        if unet is None:
            unet = self.compiled_unet if self.compiled_unet is not None else self.video_unet
        dtype = self.video_unet.dtype if unet is self.compiled_unet else unet.dtype
        return unet(latents.to(dtype), t, text.to(dtype)).float()

    def guided_noise(self, latents, t, text, guidance_scale: float, guide_unet: VideoUNet | None = None) -> torch.Tensor:
        """Guided prediction (epsilon or v: both are linear in the model, so the guidance
        arithmetic is the same). CFG (models.guidance): `text` holds [negative, prompt] and both run
        as one batch of 2. Autoguidance (Karras et al., 2024), with `guide_unet`: the same
        arithmetic with the guide model's conditional epsilon in the place of the
        unconditional one (`text` then holds the prompt only). Scale 1: the prompt's epsilon."""
        if guide_unet is not None:
            eps = self.predict_noise(latents, t, text)
            return eps if guidance_scale == 1.0 else cfg(self.predict_noise(latents, t, text, guide_unet), eps, guidance_scale)
        if text.shape[0] == latents.shape[0]:
            return self.predict_noise(latents, t, text)
        eps_uncond, eps_cond = split_cfg_batch(self.predict_noise(torch.cat([latents, latents]), t, text))
        return cfg(eps_uncond, eps_cond, guidance_scale)

    @torch.no_grad()
    def edit(
        self,
        prompts: str | Sequence[str],
        latents: torch.Tensor | None = None,
        num_inference_steps: int = SAMPLING_STEPS,
        guidance_scale: float = GUIDANCE_SCALE,
        negative_prompt: str = "",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        guide_unet: VideoUNet | None = None,
        output_type: str = "np",
        callback_on_step_end: StepCallback | None = None,
    ) -> EditOutput:
        """One video per prompt, each sampled with DDIM from the same start: `latents` (the
        inverted clip, (1, 4, F, h, w)) or, when None, Gaussian noise of `num_frames` x
        `height` x `width` from `generator` (text-to-video with the tuned model).
        CFG against `negative_prompt` ("" as the official) unless guidance_scale == 1.
        output_type "np": uint8 (F, H, W, 3) per prompt; "latent": (1, 4, F, h, w).
        `callback_on_step_end(pipe, i, t, {"latents", "prompt_index"})` after every step."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("`prompts` has to be a str or a non-empty list of str")
        if not isinstance(negative_prompt, str):
            raise ValueError("`negative_prompt` has to be a str")
        self._check_steps("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be a finite number >= 0 (1 disables guidance), got {guidance_scale!r}")
        if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` has to be in [0, 1] (0 = deterministic DDIM), got {eta!r}")
        if output_type not in ("np", "latent"):
            raise ValueError(f"`output_type` has to be 'np' or 'latent', got {output_type!r}")
        self._check_callback(callback_on_step_end)
        device = self._execution_device
        if latents is None:
            f = num_frames or self.config.default_frames
            h = (height or self.config.default_height) // self.vae_scale_factor
            w = (width or self.config.default_width) // self.vae_scale_factor
            start = randn_tensor((1, self.unet.config.in_channels, f, h, w), generator=generator, device=device,
                                 dtype=torch.float32)
        else:
            self._check_latents(latents)
            if latents.shape[0] != 1:
                raise ValueError("edit() starts every prompt from one latent video: pass latents of batch 1")
            start = latents.to(device, torch.float32)
        start = start * self.scheduler.init_noise_sigma

        # The official uses CFG only for scale > 1; here any scale != 1 guides (scale < 1
        # interpolates towards the negative prompt), as the shared guidance module defines it.
        use_cfg = guidance_scale != 1.0 and guide_unet is None
        negative = self.encode_prompt(negative_prompt, device) if use_cfg else None
        videos = []
        for k, prompt in enumerate(prompts):
            text = self.encode_prompt(prompt, device)
            if use_cfg:
                text = torch.cat([negative, text])
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            x = start.clone()
            with self.progress_bar(total=num_inference_steps) as bar:
                for i, t in enumerate(self.scheduler.timesteps):
                    eps = self.guided_noise(x, t, text, guidance_scale, guide_unet)
                    x = self.scheduler.step(eps, t, x, eta=eta, generator=generator, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        out = callback_on_step_end(self, i, t, {"latents": x, "prompt_index": k})
                        if out:
                            x = out.get("latents", x)
                    bar.update()
            videos.append(x if output_type == "latent" else self.decode_latents(x)[0])
        self.maybe_free_model_hooks()
        return EditOutput(videos=videos, prompts=prompts)
