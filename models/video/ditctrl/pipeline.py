"""DiTCtrl (Cai et al., 2024): training-free multi-prompt long video on diffusers' CogVideoX.

One denoising step, as the official `VPSDEDPMPP2MSampler_MultiPrompt.sampler_step`:
    for each adjacent segment pair (k, k+1):
        one transformer call, batch [uncond k, uncond k+1, cond k, cond k+1] (KV sharing inside)
        guided prediction per segment, accumulated into the long latent with triangle weights
    divide by the accumulated weight per frame; one scheduler step on the whole long latent.
The official sampler blends x0 (`denoised`); we blend the guided model output (v for
CogVideoX). Both segments of a pair and the long latent share x_t and t, and x0 = a x_t - b v
is affine in v, so the normalised weighted averages give the same x0 exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler,
                       CogVideoXTransformer3DModel, DiffusionPipeline)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from models.guidance import cfg, dynamic_cfg_scale, split_cfg_batch
from models.video.ditctrl.attention import DiTCtrlControl, KVSharing, install_processors
from models.video.ditctrl.layout import Blender, Layout, decoded_latent_frames, plan, segment_embeddings

PairCallback = Callable[["DiTCtrlPipeline", int, int, torch.Tensor, dict], None]
StepCallback = Callable[["DiTCtrlPipeline", int, torch.Tensor, dict], "dict | None"]


@dataclass
class VideoGenerationOutput(BaseOutput):
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB; empty when output_type == "latent"
    fps: int
    width: int
    height: int
    segments: int
    latent_frames: int
    prompts: list
    layout: Layout
    seed: int | None  # initial seed of the generator, if one was given
    latents: torch.Tensor | None = None  # (1, L, C, h, w) final long latent, output_type == "latent"


def parse_kv_sharing(kv_sharing) -> KVSharing:
    """None -> DiTCtrl's defaults (on); bool; a KVSharing; or the API's dict
    {enabled, steps: [a, b], layers: [a, b], subject_tokens, ...}."""
    if kv_sharing is None or kv_sharing is True:
        return KVSharing()
    if kv_sharing is False:
        return KVSharing(enabled=False)
    if isinstance(kv_sharing, KVSharing):
        return kv_sharing
    if isinstance(kv_sharing, dict):
        kw = dict(kv_sharing)
        for key in ("steps", "layers"):
            if key in kw and kw[key] is not None:
                kw[key] = tuple(kw[key])
        return KVSharing(**{k: v for k, v in kw.items() if v is not None})
    raise ValueError(f"`kv_sharing` has to be None, a bool, a dict or a KVSharing, got {type(kv_sharing).__name__}")


class DiTCtrlPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, tokenizer, text_encoder, vae: AutoencoderKLCogVideoX,
                 transformer: CogVideoXTransformer3DModel, scheduler: CogVideoXDPMScheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        if transformer.config.patch_size_t is not None:
            # CogVideoX 1.5 pads frames to the temporal patch and uses another RoPE grid
            raise NotImplementedError("DiTCtrl here targets CogVideoX 1.0 (2B/5B); 1.5 (patch_size_t) is not supported")
        self.num_layers = install_processors(transformer)
        self.vae_scale_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_scale_temporal = vae.config.temporal_compression_ratio

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the transformer was trained at: 720x480 for CogVideoX-2B."""
        c = self.transformer.config
        return c.sample_width * self.vae_scale_spatial, c.sample_height * self.vae_scale_spatial

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str], max_sequence_length: int) -> list[torch.Tensor]:
        """T5 last hidden states, padded/truncated to `max_sequence_length`, one (1, n, D) each."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids.to(self._execution_device)
        emb = self.text_encoder(ids)[0]
        return [e[None].to(self.transformer.dtype) for e in emb]

    def subject_token_indices(self, prompt: str, subject, max_sequence_length: int) -> list[int]:
        """Token positions of the subject: ints are taken as given; words are found
        (whole word, case-insensitive) through the tokenizer's character offsets."""
        if not subject:
            return []
        if all(isinstance(s, int) for s in subject):
            bad = [s for s in subject if not 0 <= s < max_sequence_length]
            if bad:
                raise ValueError(f"subject token indices {bad} are outside [0, {max_sequence_length})")
            return sorted(set(subject))
        enc = self.tokenizer(prompt, max_length=max_sequence_length, truncation=True, return_offsets_mapping=True)
        spans = [m.span() for w in subject for m in re.finditer(rf"\b{re.escape(str(w))}\b", prompt, re.IGNORECASE)]
        return sorted({i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and any(a < e and b > s for s, e in spans)})

    # ------------------------------------------------------------------ helpers

    def _rotary(self, height: int, width: int, frames: int, device):
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None  # CogVideoX-2B: 3D sin-cos positions inside the patch embedding
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

        c, p = self.transformer.config, self.transformer.config.patch_size
        gh, gw = height // (self.vae_scale_spatial * p), width // (self.vae_scale_spatial * p)
        crops = get_resize_crop_region_for_grid((gh, gw), c.sample_width // p, c.sample_height // p)
        return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                                       temporal_size=frames, device=device)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """(1, L, C, h, w) long latent -> (4(L-1)+1, H, W, 3) uint8 (odd L; an even L decodes its
        first L-1 frames, see `layout.decoded_latent_frames`), in temporal chunks.

        The chunks are the official ones ([0:3], [3:5], [5:7], ... latent frames for odd L, with
        the causal-conv cache carried between them: diffusers' `AutoencoderKLCogVideoX._decode`
        loop, here written out so each chunk is turned into uint8 on the CPU at once and the
        float video never exists whole on the device). With `vae.use_tiling` it hands the
        whole latent to `vae.decode` (spatial tiles, same temporal chunks)."""
        z = (latents.permute(0, 2, 1, 3, 4) / self.vae.config.scaling_factor).to(self.vae.dtype)
        z = z[:, :, : decoded_latent_frames(z.shape[2])]  # even L: the official loop drops the last

        def to_uint8(x):
            x = (x.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
            return x[0].permute(1, 2, 3, 0).cpu().numpy()  # (F, H, W, 3)

        if getattr(self.vae, "use_tiling", False):
            return to_uint8(self.vae.decode(z).sample)
        step = self.vae.num_latent_frames_batch_size
        n = z.shape[2]
        rem = n % step
        chunks, cache = [], None
        for i in range(max(n // step, 1)):
            a = 0 if i == 0 else step * i + rem
            zi = z[:, :, a: step * (i + 1) + rem]
            if self.vae.post_quant_conv is not None:
                zi = self.vae.post_quant_conv(zi)
            xi, cache = self.vae.decoder(zi, conv_cache=cache)
            chunks.append(to_uint8(xi))
        return np.concatenate(chunks, axis=0)

    # ------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | list[str],
        segments: int | None = None,
        overlap: int = 6,
        transition_segments: int = 1,
        kv_sharing: KVSharing | dict | bool | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        use_dynamic_cfg: bool = True,
        sampler: str = "dpm",
        eta: float = 0.0,
        height: int | None = None,
        width: int | None = None,
        fps: int = 16,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: list[torch.Tensor] | None = None,
        output_type: str = "np",
        callback_on_pair_end: PairCallback | None = None,
        callback_on_step_end: StepCallback | None = None,
    ) -> VideoGenerationOutput:
        """Generate one long video from `prompts` (one segment each, plus transitions).

        `segments`: single prompt only, the number of 13-latent-frame segments. `kv_sharing`:
        see `KVSharing` (None = on with the paper's windows). `sampler`: "dpm" (the official
        VPSDEDPMPP2M = CogVideoXDPMScheduler) or "ddim" (CogVideoXDDIMScheduler). `eta`: only 0
        (refused otherwise, rather than ignored): neither sampler has one -- the official
        DPM++ 2M SDE's noise is part of its SDE, and CogVideoX's DDIM step is deterministic.
        `guidance_scale` <= 1 turns CFG off (one conditional pass, diffusers' CogVideoX
        convention); the official guider would still mix in the unconditional prediction at
        dynamic scales 1 + s (1 - cos) / 2. `prompt_embeds`: precomputed (1, n, D) T5 states per
        prompt (skips the text encoder).

        `callback_on_pair_end(pipe, step_index, pair_index, timestep, info)` runs after every
        transformer call, info = {pair_index, num_pairs, num_steps, calls_done, total_calls};
        `callback_on_step_end(pipe, step_index, timestep, {"latents": ...})` after every
        scheduler step (diffusers style; may return {"latents": ...}). Exceptions raised by
        either propagate: that is how a job is canceled within one pair call."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        width, height = width or self.default_size[0], height or self.default_size[1]
        mult = self.vae_scale_spatial * self.transformer.config.patch_size
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("`prompts` has to hold at least one non-empty string")
        if height % mult or width % mult or height < mult or width < mult:
            raise ValueError(f"`height` and `width` have to be positive multiples of {mult}, got {height}x{width}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` has to be an int >= 1, got {num_inference_steps!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be a finite number >= 0, got {guidance_scale!r}")
        if sampler not in ("dpm", "ddim"):
            raise ValueError(f"`sampler` has to be 'dpm' or 'ddim', got {sampler!r}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta != 0:
            # the official VPSDEDPMPP2MSampler (sgm/modules/diffusionmodules/sampling.py) has no eta; diffusers'
            # CogVideoXDPMScheduler.step and CogVideoXDDIMScheduler.step accept one and never read it
            raise ValueError(f"`eta` {eta!r} would have no effect: neither sampler has one (the official DPM++ 2M SDE "
                             "injects its own noise, CogVideoX's DDIM step is deterministic); pass eta=0")
        if output_type not in ("np", "latent"):
            raise ValueError(f"`output_type` has to be 'np' or 'latent', got {output_type!r}")
        kv = parse_kv_sharing(kv_sharing)
        layout = plan(len(prompts), overlap, transition_segments, segments)
        device = self._execution_device
        text_len = self.transformer.config.max_text_seq_length

        # -- text: per-prompt T5 states, per-segment mixes, all-zero unconditional embedding
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompts(prompts, text_len)
        else:
            want = (1, text_len, self.transformer.config.text_embed_dim)
            if len(prompt_embeds) != len(prompts) or any(tuple(e.shape) != want for e in prompt_embeds):
                # the sin-cos positions of the video tokens start after exactly `text_len` tokens
                raise ValueError(f"`prompt_embeds` has to hold one {want} tensor per prompt ({len(prompts)})")
        seg_embeds = [e.to(device=device, dtype=self.transformer.dtype) for e in segment_embeddings(layout, prompt_embeds)]
        do_cfg = guidance_scale > 1.0

        # -- KV sharing (and mask guidance) control
        steps_w, layers_w = kv.windows(num_inference_steps, self.num_layers)
        frames, p = layout.segment_frames, self.transformer.config.patch_size
        grid = (frames, height // self.vae_scale_spatial // p, width // self.vae_scale_spatial // p)
        control, seg_tokens = None, None
        if kv.enabled and len(layout.segments) > 1:
            mask_guided = bool(kv.subject_tokens)
            control = DiTCtrlControl(steps_w, layers_w, grid, mask_guided, kv.mask_threshold, kv.chunk_elements)
            if mask_guided:
                tokens = [self.subject_token_indices(pr, kv.subject_tokens, text_len) for pr in prompts]
                missing = [prompts[i] for i, t in enumerate(tokens) if not t]
                if missing:
                    raise ValueError(f"subject tokens {kv.subject_tokens!r} not found in prompt(s) {missing!r}")
                # a transition segment mixes two prompts' embeddings position-wise: the subject
                # tokens of both count (our choice; the official config has one index list)
                seg_tokens = [sorted(set(tokens[s.prompt]) | set(tokens[s.next_prompt])) for s in layout.segments]

        # -- noise on the whole long latent (the official per-segment noise copy over overlaps
        #    rewrites the same frames with themselves, so i.i.d. noise is the same thing)
        c = self.transformer.config
        shape = (1, layout.latent_frames, c.in_channels, height // self.vae_scale_spatial, width // self.vae_scale_spatial)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has to have shape {shape}, got {tuple(latents.shape)}")
        sched = self.scheduler if sampler == "dpm" else CogVideoXDDIMScheduler.from_config(self.scheduler.config)
        latents = latents.to(device=device, dtype=torch.float32) * sched.init_noise_sigma
        sched.set_timesteps(num_inference_steps, device=device)
        timesteps = sched.timesteps
        rotary = self._rotary(height, width, frames, device)

        pairs = layout.pairs
        total_calls = len(timesteps) * len(pairs)
        old_x0 = None
        with self.progress_bar(total=total_calls) as bar:
            for i, t in enumerate(timesteps):
                scale = dynamic_cfg_scale(guidance_scale, t.item(), num_inference_steps) if use_dynamic_cfg else guidance_scale
                blender = Blender(layout, latents)
                for pi, pair in enumerate(pairs):
                    x = torch.cat([latents[:, layout.segments[k].start: layout.segments[k].start + frames] for k in pair])
                    emb = torch.cat([seg_embeds[k] for k in pair])
                    if do_cfg:
                        x, emb = torch.cat([x, x]), torch.cat([torch.zeros_like(emb), emb])
                    kwargs = None
                    if control is not None:
                        control.begin_pass(seg_tokens[pair[0]] if seg_tokens else None,
                                           seg_tokens[pair[-1]] if seg_tokens else None, paired=len(pair) == 2)
                        kwargs = {"step_index": i, "ditctrl": control}
                    x = sched.scale_model_input(x, t).to(self.transformer.dtype)
                    out = self.transformer(hidden_states=x, encoder_hidden_states=emb, timestep=t.expand(x.shape[0]),
                                           image_rotary_emb=rotary, attention_kwargs=kwargs, return_dict=False)[0].float()
                    if do_cfg:
                        out = cfg(*split_cfg_batch(out), scale)
                    for j, k in enumerate(pair):
                        blender.add(k, out[j: j + 1])
                    bar.update()
                    if callback_on_pair_end is not None:
                        callback_on_pair_end(self, i, pi, t, dict(pair_index=pi, num_pairs=len(pairs),
                                                                  num_steps=len(timesteps), calls_done=i * len(pairs) + pi + 1,
                                                                  total_calls=total_calls))
                model_output = blender.result()
                if sampler == "dpm":
                    latents, old_x0 = sched.step(model_output, old_x0, t, timesteps[i - 1] if i > 0 else None, latents,
                                                 generator=generator, return_dict=False)
                else:
                    latents = sched.step(model_output, t, latents, generator=generator, return_dict=False)[0]
                if callback_on_step_end is not None:
                    ret = callback_on_step_end(self, i, t, {"latents": latents})
                    if ret:
                        latents = ret.get("latents", latents)

        frames_out = np.zeros((0, height, width, 3), np.uint8) if output_type == "latent" else self.decode_latents(latents)
        self.maybe_free_model_hooks()
        return VideoGenerationOutput(
            frames=frames_out, fps=fps, width=width, height=height, segments=len(layout.segments),
            latent_frames=layout.latent_frames, prompts=prompts, layout=layout,
            seed=generator.initial_seed() if generator is not None else None,
            latents=latents if output_type == "latent" else None,
        )
