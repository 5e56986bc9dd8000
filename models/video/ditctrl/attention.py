"""DiTCtrl's attention control for CogVideoX's joint (text + video) attention.

KV sharing: every transformer call holds one adjacent segment pair, batched as
[uncond k, uncond k+1, cond k, cond k+1] (or [cond k, cond k+1] without CFG): pairs
(source, target) interleaved. Inside the step window x layer window the target attends with
its own queries to the *source's* joint keys and values (taken after the per-head query/key
LayerNorm, as the official `attention_fn` does, and after RoPE where the model has it: both
segments sit at the same positions, so the source keys carry the target's positional phase).
Outside the windows attention is exactly diffusers' `CogVideoXAttnProcessor2_0`.

Mask-guided variant (opt-in): the cond source's and cond target's video-query -> text-key
attention probabilities (softmax over *all* keys, own segment, averaged over heads and over
layers 0..l of the current pass) give per-frame min-max normalised subject maps, thresholded.
The target is attended twice, with the source's video keys restricted to the subject
(foreground) or to the rest (background), text keys always attendable, and fused as
M * out_fg + (1 - M) * out_bg with M the target's mask (1 on the subject's text tokens).

Memory: the official code materialises (B, L, L) probability maps per layer and (L, L) masks
(L = 226 + 17550 for CogVideoX-2B at 480x720: ~1.3 GB per fp32 map). Here the probability maps
are computed in query chunks bounded by `chunk_elements` score elements (default 2**27: about
1.3 GB transient with fp16 scores and an fp32 softmax) and only for the two cond samples; only the (2, Nv, text) average is kept (~32 MB for 2B). The
restricted attentions gather the allowed keys instead of building masks, so they stay
memory-efficient/flash kernels. Cost inside the step window: one extra QK^T + softmax per layer
0..layers_end-1 for the two cond samples, and a second target attention in window layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.video.ditctrl.layout import scale_window

# Paper / official defaults: steps [2, 25) of 50, layers [25, 30) of 30 (CogVideoX-2B depth).
DEFAULT_STEPS = (2, 25)
DEFAULT_LAYERS = (25, 30)
REFERENCE_STEPS = 50
REFERENCE_LAYERS = 30
# The threshold (the released KVSharingMaskGuidedAdaLNMixin defaults to 0.1; its
# configs tell you to tune it together with the token indices).
DEFAULT_MASK_THRESHOLD = 0.3


@dataclass
class KVSharing:
    """KV-sharing settings. Windows are half-open [a, b). With `reference_steps` /
    `reference_layers` set, the windows are given for that many steps / layers and are scaled
    to the run (so [2, 25) of 50 steps stays ~4%..50% at 20 steps, and [25, 30) of 30 layers is
    the last sixth of any depth); None means the windows are absolute indices for this run.
    `subject_tokens` (indices into the prompt's tokens, or words) turns on the mask-guided variant."""

    enabled: bool = True
    steps: tuple[int, int] = DEFAULT_STEPS
    layers: tuple[int, int] = DEFAULT_LAYERS
    reference_steps: int | None = REFERENCE_STEPS
    reference_layers: int | None = REFERENCE_LAYERS
    subject_tokens: list | None = None
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    chunk_elements: int = 2**27

    def windows(self, num_steps: int, num_layers: int) -> tuple[tuple[int, int], tuple[int, int]]:
        return (scale_window(tuple(self.steps), self.reference_steps, num_steps),
                scale_window(tuple(self.layers), self.reference_layers, num_layers))


def subject_mask(cross: torch.Tensor, tokens: list[int], grid: tuple[int, int, int], threshold: float) -> torch.Tensor:
    """Binary subject mask over video tokens from a (Nv, text) attention map: sum the subject
    tokens' columns, min-max normalise per frame (+1e-6, as the official controller), >= threshold.
    `grid` = (frames, rows, cols) of the video tokens, in CogVideoX's (t, h, w) token order."""
    f, h, w = grid
    m = cross[:, tokens].sum(-1).reshape(f, h * w).float()
    lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
    return ((m - lo) / (hi - lo + 1e-6) >= threshold).reshape(-1)


def mask_guided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int,
                          source_fg: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Target queries `q` (G, h, L, d) over source keys/values; returns (G, h, L, d).

    Video queries attend once to text + source-foreground video keys and once to text +
    source-background video keys; the two are fused by the target's video mask. Text queries
    attend to every key in both (the official fg/bg masks leave text rows open), so both
    branches agree there and the text-token part of M (1 on the subject's tokens) changes
    nothing: out = out_text. Restricting by gathering keys equals the official additive
    finfo.min masks (exp underflows to exactly 0) without building an (L, L) mask."""
    video_q = q[:, :, text_len:]
    text_idx = torch.arange(text_len, device=q.device)
    fg_idx = torch.cat([text_idx, text_len + torch.nonzero(source_fg, as_tuple=True)[0]])
    bg_idx = torch.cat([text_idx, text_len + torch.nonzero(~source_fg, as_tuple=True)[0]])
    out_text = F.scaled_dot_product_attention(q[:, :, :text_len], k, v)
    out_fg = F.scaled_dot_product_attention(video_q, k[:, :, fg_idx], v[:, :, fg_idx])
    out_bg = F.scaled_dot_product_attention(video_q, k[:, :, bg_idx], v[:, :, bg_idx])
    m = target_mask.to(out_fg.dtype).view(1, 1, -1, 1)
    return torch.cat([out_text, m * out_fg + (1 - m) * out_bg], dim=2)


@dataclass
class DiTCtrlControl:
    """Per-generation control state, handed to the processors through `attention_kwargs`
    (`{"step_index": i, "ditctrl": control}`). The pipeline calls `begin_pass` before each
    transformer call (it resets the per-pass attention-map average)."""

    step_window: tuple[int, int]
    layer_window: tuple[int, int]
    grid: tuple[int, int, int]  # video tokens (frames, rows, cols) of one segment
    mask_guided: bool = False
    threshold: float = DEFAULT_MASK_THRESHOLD
    chunk_elements: int = 2**27
    source_tokens: list[int] = field(default_factory=list)
    target_tokens: list[int] = field(default_factory=list)
    paired: bool = True  # False for a lone segment: nothing to share
    _cross_sum: torch.Tensor | None = None
    _cross_count: int = 0

    def begin_pass(self, source_tokens=None, target_tokens=None, paired: bool = True) -> None:
        self.source_tokens = list(source_tokens or [])
        self.target_tokens = list(target_tokens or [])
        self.paired = paired
        self._cross_sum, self._cross_count = None, 0

    def in_window(self, step: int | None, layer: int) -> bool:
        return (self.paired and step is not None and self.step_window[0] <= step < self.step_window[1]
                and self.layer_window[0] <= layer < self.layer_window[1])

    def records_maps(self, step: int | None) -> bool:
        return (self.mask_guided and self.paired and step is not None
                and self.step_window[0] <= step < self.step_window[1])

    def record(self, q: torch.Tensor, k: torch.Tensor, text_len: int, layer: int) -> None:
        """Add this layer's head-averaged video->text probabilities of the cond pair (the last
        two batch entries), computed in query chunks of bounded size."""
        if layer >= self.layer_window[1]:
            return  # no window layer after this one reads the average
        q, k = q[-2:], k[-2:]
        b, h, length, d = k.shape
        nv = length - text_len
        rows = max(1, self.chunk_elements // (b * h * length))
        out = torch.empty(b, nv, text_len, device=q.device, dtype=torch.float32)
        scale = 1.0 / math.sqrt(d)
        kt = k.transpose(-1, -2)
        for s in range(0, nv, rows):
            qc = q[:, :, text_len + s: text_len + s + rows]
            probs = torch.softmax((qc @ kt).float() * scale, dim=-1)
            out[:, s: s + qc.shape[2]] = probs[..., :text_len].mean(1)
        self._cross_sum = out if self._cross_sum is None else self._cross_sum + out
        self._cross_count += 1

    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        avg = self._cross_sum / self._cross_count
        return (subject_mask(avg[0], self.source_tokens, self.grid, self.threshold),
                subject_mask(avg[1], self.target_tokens, self.grid, self.threshold))

    def shared_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_len: int) -> torch.Tensor:
        """Sources attend normally; targets attend with their queries to their source's K/V."""
        b, h, length, d = q.shape
        if b % 2:
            raise ValueError(f"a DiTCtrl pair batch has an even size ([.., source, target] pairs), got {b}")
        qg, kg, vg = (t.view(b // 2, 2, h, length, d) for t in (q, k, v))
        k_src, v_src = kg[:, 0], vg[:, 0]
        out_src = F.scaled_dot_product_attention(qg[:, 0], k_src, v_src)
        if self.mask_guided and self._cross_count:
            source_fg, target_mask = self.masks()
            out_tgt = mask_guided_attention(qg[:, 1], k_src, v_src, text_len, source_fg, target_mask)
        else:
            out_tgt = F.scaled_dot_product_attention(qg[:, 1], k_src, v_src)
        return torch.stack([out_src, out_tgt], dim=1).view(b, h, length, d)


class DiTCtrlAttnProcessor:
    """Drop-in for `CogVideoXAttnProcessor2_0` that takes `step_index` and the `ditctrl`
    control through the transformer's `attention_kwargs`. Without them it *is* the stock
    processor's computation, so it can stay installed for plain generation."""

    def __init__(self, layer_index: int):
        self.layer_index = layer_index

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None,
                 step_index: int | None = None, ditctrl: DiTCtrlControl | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        b, length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, b)
            attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)

        ctl = ditctrl
        if ctl is not None and ctl.records_maps(step_index):
            ctl.record(query, key, text_len, self.layer_index)
        if ctl is not None and ctl.in_window(step_index, self.layer_index):
            if attention_mask is not None:
                raise ValueError("KV sharing does not take an attention mask (CogVideoX passes none)")
            out = ctl.shared_attention(query, key, value, text_len)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_out, video_out = out.split([text_len, out.size(1) - text_len], dim=1)
        return video_out, encoder_out


def install_processors(transformer) -> int:
    """Put a `DiTCtrlAttnProcessor` on every CogVideoX block's attention; returns the depth."""
    procs = {}
    for name in transformer.attn_processors:
        # names look like "transformer_blocks.{i}.attn1.processor"
        parts = name.split(".")
        procs[name] = DiTCtrlAttnProcessor(int(parts[1]))
    transformer.set_attn_processor(procs)
    return len(transformer.transformer_blocks)
