"""Streamlined self-attention guidance (Control Color's colour-overflow fix, default on).

As the official sampler (`cldm/ddim_haced_sag_step.py`), which differs from diffusers'
`StableDiffusionSAGPipeline` on each point:
- only at steps whose timestep t > threshold (600: 951..601, the first 8 of 20 DDIM steps --
  ldm's 'uniform' timesteps are 1, 51, ..., 951, so 601 is included);
- the predicted clean latent x0 comes from the *guided* (CFG) noise estimate;
- the mask comes from the UNet mid-block self-attention map: head average, summed over the
  queries, > 1 (a key that receives more than its uniform share of attention), upsampled to
  latent size with nearest;
- x0 is degraded by a Gaussian blur (kernel 9, sigma 1, reflect padding) inside the mask;
- the degraded x0 is fed to the model at step t as is, WITHOUT re-noising;
- the guided (CFG + ControlNet) prediction on it gives eps_deg, and
  eps <- eps + s * (eps - eps_deg).
Deviation (named; `parity.sag_heads = "official"` removes it): the official code reshapes the
attention probabilities of its last pass (the unconditional one) with 4 heads after `chunk(2)`
(p_sample_ddim: `uncond_attn, cond_attn = ...attn1.attention_probs.chunk(2)`; sag_masking:
`h = 4`, `attn_map.reshape(b, h, hw1, hw2)`), i.e. it averages heads 0-3 of 8 for batch 1 and
mixes items for larger batches. We average all heads of each item.

The attention map needs the probabilities, which fused attention kernels never materialise:
`ExplicitAttnProcessor` computes softmax(QK^T / sqrt(d)) explicitly on that one layer (8x8
tokens at 512 px, negligible cost) and keeps them while capturing.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

SAG_KERNEL_SIZE = 9
SAG_SIGMA = 1.0


class ExplicitAttnProcessor:
    """diffusers' classic `AttnProcessor` math (explicit softmax) that stores the attention
    probabilities (batch * heads, queries, keys) of the latest call while `capture` is on."""

    def __init__(self):
        self.capture = False
        self.probs: torch.Tensor | None = None
        self.heads: int | None = None
        self.calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.calls += 1
        if self.capture:
            self.probs, self.heads = probs.detach(), attn.heads
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class MidBlockAttention:
    """Installs `ExplicitAttnProcessor` on the UNet's mid-block self-attention (attn1 of the
    first transformer block) and records the mid-block's spatial size; restores on exit."""

    def __init__(self, unet):
        transformer = unet.mid_block.attentions[0]
        self.attn = transformer.transformer_blocks[0].attn1
        self.transformer = transformer
        self.processor = ExplicitAttnProcessor()
        self.map_size: tuple[int, int] | None = None
        self._saved = None
        self._hook = None

    def _pre_hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.map_size = tuple(x.shape[-2:])

    def __enter__(self):
        self._saved = self.attn.processor
        self.attn.set_processor(self.processor)
        self._hook = self.transformer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._hook.remove()
        self.attn.set_processor(self._saved)

    @contextmanager
    def capturing(self, on: bool = True):
        self.processor.capture, self.processor.probs = on, None
        try:
            yield self
        finally:
            self.processor.capture = False

    def mask(self, items: slice, latent_size: tuple[int, int], rule: str = "all") -> torch.Tensor:
        """(N, 1, h, w) float {0, 1}: the SAG mask of the captured pass' batch items `items`
        (one request's images), under the heads `rule` ("all" | "official")."""
        probs, heads = self.processor.probs, self.processor.heads
        if probs is None or self.map_size is None:
            raise RuntimeError("no mid-block attention map was captured in this pass")
        rows = probs[items.start * heads: items.stop * heads]  # batch-major: item k = rows k*heads ..
        return sag_attention_mask(rows, heads, self.map_size, latent_size, rule)


def sag_attention_mask(probs: torch.Tensor, heads: int, map_size: tuple[int, int],
                       latent_size: tuple[int, int], rule: str = "all") -> torch.Tensor:
    """Attention probabilities (B * heads, hw, hw) of one pass' B items, batch-major as
    diffusers' head_to_batch_dim lays them out -> (B, 1, h, w) float mask: mean over the heads,
    sum over the queries, > 1, nearest-upsampled to the latent size.

    rule "all": each item's own heads, all of them. rule "official": the first half of the rows
    (`chunk(2)`) read as B groups of heads / 2 (the official hard-codes 4 for SD's 8 heads):
    heads 0-3 for one item; item k of several reads item k // 2, heads 4 (k % 2) .. 4 (k % 2) + 3."""
    bh, hw1, hw2 = probs.shape
    b = bh // heads
    if b * heads != bh or hw2 != map_size[0] * map_size[1]:
        raise ValueError(f"attention map {tuple(probs.shape)} does not fit {heads} heads at {map_size}")
    if rule == "official":
        if heads % 2:
            raise ValueError(f"the official SAG head rule needs an even number of heads, got {heads}")
        m = probs[: bh // 2].float().reshape(b, heads // 2, hw1, hw2).mean(1).sum(1) > 1.0
    elif rule == "all":
        m = probs.float().reshape(b, heads, hw1, hw2).mean(1).sum(1) > 1.0
    else:
        raise ValueError(f"SAG heads rule has to be 'all' or 'official', got {rule!r}")
    m = m.reshape(b, 1, *map_size).to(torch.float32)
    return F.interpolate(m, size=latent_size, mode="nearest")


def gaussian_blur_2d(img: torch.Tensor, kernel_size: int = SAG_KERNEL_SIZE, sigma: float = SAG_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur per channel with reflect padding (the official gaussian_blur_2d).
    Deviation: reflect padding needs sides > kernel_size // 2; smaller latents (only reachable
    with custom tiny working sizes) fall back to replicate padding."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, device=img.device, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(img.dtype)
    k2 = torch.outer(k1, k1).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    mode = "reflect" if min(img.shape[-2:]) > pad else "replicate"
    img = F.pad(img, [pad, pad, pad, pad], mode=mode)
    return F.conv2d(img, k2, groups=img.shape[-3])


def sag_degrade(x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blur x0 inside the mask, keep it outside (official `sag_masking`)."""
    mask = mask.to(x0.dtype)
    return gaussian_blur_2d(x0) * mask + x0 * (1 - mask)


def predicted_x0(latents: torch.Tensor, eps: torch.Tensor, alpha_prod_t: torch.Tensor | float) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (eps parameterisation)."""
    a = torch.as_tensor(alpha_prod_t, dtype=torch.float32, device=latents.device)
    return (latents - (1 - a).sqrt() * eps) / a.sqrt()
