"""Inflate a diffusers `UNet2DConditionModel` into Tune-A-Video's video UNet, in place.

Tune-A-Video (Wu et al., 2023) keeps the image model and changes how it sees a clip of F
frames. The official code forks diffusers 0.11's UNet into "3D" copies of every block; here
the current diffusers UNet is kept as it is and changed only through attention processors
and module wrappers, so any SD 1.x/2.x UNet (and its weights) inflates:

    convolutions          stay 2D and run frame by frame: frames ride in the batch axis,
                          (B*F, C, H, W) in the order "(b f)" as in the original ("1x3x3").
    ResNet GroupNorms and `VideoGroupNorm`: statistics over all frames of a video together
    conv_norm_out         (the original hands 5D (b, c, f, h, w) tensors to nn.GroupNorm).
    transformer norms     unchanged, so per frame (the original flattens to (b f) first).
    attn1 (self-attn)     `SparseCausalAttnProcessor`: queries of frame i attend to keys/values
                          of [frame 0; frame i-1] (frame 0: [frame 0; frame 0]).
    after the feed-forward `TemporalTransformerBlock` adds temporal attention: LayerNorm ->
                          self-attention over the F frames at each spatial position ->
                          residual. Its output projection starts at zero.

Attention runs through torch's scaled_dot_product_attention (the official code enables
xformers): the same arithmetic, with flash / memory-efficient kernels on CUDA.

How many frames the current batch holds is not visible in a (B*F, ...) tensor, so the
wrappers and processors of one UNet share a `FrameContext` that `VideoUNet.forward` sets
before every call (gradient checkpointing recomputes inside backward with the same value).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

# The official `trainable_modules`: a parameter trains when the name of a module holding it
# ends with one of these. "attn_temp" is the whole temporal attention module (to_q, to_k,
# to_v, to_out); its LayerNorm `norm_temp` is not matched, so it stays frozen at its init
# (weight 1, bias 0), exactly as in the official train_tuneavideo.py.
TRAINABLE_MODULES = ("attn1.to_q", "attn2.to_q", "attn_temp")


class FrameContext:
    """The frame count of the batch the UNet is running on, shared by its wrappers."""

    def __init__(self) -> None:
        self.frames = 1

    def split(self, batch_frames: int) -> tuple[int, int]:
        """(B, F) for a leading axis of B*F."""
        f = self.frames
        if f < 1 or batch_frames % f:
            raise ValueError(f"a batch of {batch_frames} is not a whole number of {f}-frame videos")
        return batch_frames // f, f


# ------------------------------------------------------------------------------ GroupNorm


class VideoGroupNorm(nn.Module):
    """Wraps an `nn.GroupNorm` so its statistics run over all frames of each video:
    (B*F, C, H, W) is viewed as (B, C, F, H, W), the tensor the original normalises, so a
    group's mean and variance are taken over (C/G, F, H, W). The wrapped module's weight and
    bias are used as they are (per channel, shared by the frames)."""

    def __init__(self, norm: nn.GroupNorm, ctx: FrameContext):
        super().__init__()
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"VideoGroupNorm wraps nn.GroupNorm, got {type(norm).__name__}")
        self.norm = norm
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f = self.ctx.split(x.shape[0])
        if f == 1:
            return self.norm(x)
        n = self.norm
        x5 = x.unflatten(0, (b, f)).transpose(1, 2)  # (B, C, F, H, W)
        y = F.group_norm(x5, n.num_groups, n.weight, n.bias, n.eps)
        return y.transpose(1, 2).flatten(0, 1)


# ------------------------------------------------------------------------------ sparse-causal


def sparse_causal_kv(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, N, C) per-frame tokens -> (B*F, 2N, C): for frame i, the tokens of frame 0 then
    those of frame max(i-1, 0). The official `torch.cat([key[:, [0] * f], key[:, former]], 2)`."""
    bf, n, c = x.shape
    x = x.view(bf // frames, frames, n, c)
    former = torch.arange(frames, device=x.device) - 1
    former[0] = 0
    first = x[:, :1].expand(-1, frames, -1, -1)
    return torch.cat([first, x[:, former]], dim=2).flatten(0, 1)


class SparseCausalAttnProcessor:
    """Self-attention processor for `attn1`: queries from frame i, keys and values from
    [frame 0; frame i-1]. Otherwise the arithmetic of diffusers' AttnProcessor2_0 (SDPA with
    the module's own scale), so a one-frame clip gives plain self-attention."""

    def __init__(self, ctx: FrameContext):
        self.ctx = ctx

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise NotImplementedError("sparse-causal attention is self-attention: encoder_hidden_states must be None")
        if attention_mask is not None:  # SD never masks self-attention
            raise NotImplementedError("sparse-causal attention takes no attention_mask")
        if attn.spatial_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("sparse-causal attention expects (B*F, tokens, channels) without spatial norm")
        residual = hidden_states
        _, frames = self.ctx.split(hidden_states.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = sparse_causal_kv(attn.to_k(hidden_states), frames)
        value = sparse_causal_kv(attn.to_v(hidden_states), frames)

        bf = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(bf, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(bf, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(bf, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False, scale=attn.scale)
        out = out.transpose(1, 2).reshape(bf, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# ------------------------------------------------------------------------------ temporal attention


class TemporalTransformerBlock(nn.Module):
    """Wraps a diffusers `BasicTransformerBlock` (sparse-causal self-attn -> cross-attn ->
    feed-forward) and appends temporal attention: for every spatial position, self-attention
    over the F frames, with its own LayerNorm and a residual, as the official block's
    "Temporal-Attention" (no positional encoding there either).

    DEVIATION (named): the official code zeroes only `attn_temp.to_out[0].weight` and leaves
    its bias at nn.Linear's random init; here the bias is zeroed too, so a freshly inflated
    UNet is exactly the 2D model on every frame (the temporal branch adds 0)."""

    def __init__(self, block: BasicTransformerBlock, ctx: FrameContext):
        super().__init__()
        if not isinstance(block, BasicTransformerBlock):
            raise TypeError(f"expected a BasicTransformerBlock, got {type(block).__name__}")
        if block.norm_type != "layer_norm" or block.only_cross_attention or block.pos_embed is not None:
            raise NotImplementedError(
                f"Tune-A-Video inflation supports SD-style blocks (layer_norm, self-attn first); got norm_type="
                f"{block.norm_type!r}, only_cross_attention={block.only_cross_attention}"
            )
        self.block = block
        self.ctx = ctx
        dim = block.dim
        p = next(block.parameters())
        self.norm_temp = nn.LayerNorm(dim)
        self.attn_temp = Attention(
            query_dim=dim,
            heads=block.num_attention_heads,
            dim_head=block.attention_head_dim,
            dropout=block.dropout,
            bias=block.attention_bias,
            upcast_attention=block.attn1.upcast_attention,
        )
        nn.init.zeros_(self.attn_temp.to_out[0].weight)
        nn.init.zeros_(self.attn_temp.to_out[0].bias)  # the named deviation above
        self.norm_temp.to(device=p.device, dtype=p.dtype)
        self.attn_temp.to(device=p.device, dtype=p.dtype)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # Transformer2DModel calls blocks with keywords, or positionally under checkpointing.
        hidden_states = self.block(hidden_states, *args, **kwargs)
        return self.temporal(hidden_states)

    def temporal(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B*F, N, C) -> (B*F, N, C): x + attn_temp(norm_temp(x)) along the frame axis."""
        b, f = self.ctx.split(hidden_states.shape[0])
        _, n, c = hidden_states.shape
        x = hidden_states.view(b, f, n, c).transpose(1, 2).reshape(b * n, f, c)  # "(b f) d c -> (b d) f c"
        x = self.attn_temp(self.norm_temp(x)) + x
        return x.view(b, n, f, c).transpose(1, 2).reshape(b * f, n, c)


# ------------------------------------------------------------------------------ the UNet


def is_inflated(unet: UNet2DConditionModel) -> bool:
    return isinstance(getattr(unet, "_tuneavideo_ctx", None), FrameContext)


def inflate_unet(unet: UNet2DConditionModel, seed: int = 0) -> FrameContext:
    """Inflate `unet` in place (idempotent) and return its frame context. The temporal
    attentions' q/k/v get nn.Linear's init from `seed` (the caller's RNG is untouched), so the
    same seed gives the same inflated model."""
    if is_inflated(unet):
        return unet._tuneavideo_ctx
    ctx = FrameContext()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in list(unet.modules()):
            if isinstance(module, ResnetBlock2D):
                module.norm1 = VideoGroupNorm(module.norm1, ctx)
                module.norm2 = VideoGroupNorm(module.norm2, ctx)
            elif isinstance(module, Transformer2DModel):
                for i, block in enumerate(module.transformer_blocks):
                    block.attn1.set_processor(SparseCausalAttnProcessor(ctx))
                    module.transformer_blocks[i] = TemporalTransformerBlock(block, ctx)
    if unet.conv_norm_out is not None:
        unet.conv_norm_out = VideoGroupNorm(unet.conv_norm_out, ctx)
    unet._tuneavideo_ctx = ctx
    return ctx


def trainable_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter of a module whose name ends with one of
    TRAINABLE_MODULES (the official selection rule), in registration order."""
    found: dict[str, nn.Parameter] = {}
    for mname, module in unet.named_modules():
        if mname.endswith(TRAINABLE_MODULES):
            for pname, p in module.named_parameters(prefix=mname):
                found.setdefault(pname, p)
    if not found:
        raise ValueError("no trainable parameters found: is the UNet inflated?")
    return found


class VideoUNet(nn.Module):
    """An inflated UNet over videos: sample (B, C, F, H, W), one timestep per video (or a
    scalar), text (B, L, D) -> (B, C_out, F, H, W). Frames ride in the batch axis in the
    order (b f); each video's timestep and text are repeated over its frames."""

    def __init__(self, unet: UNet2DConditionModel, seed: int = 0):
        super().__init__()
        self.ctx = inflate_unet(unet, seed)
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if sample.ndim != 5:
            raise ValueError(f"sample has to be (B, C, F, H, W), got shape {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} != sample batch {b}")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(b) if t.ndim == 0 else t.reshape(b)
        self.ctx.frames = f
        out = self.unet(
            sample.transpose(1, 2).reshape(b * f, c, h, w),
            t.repeat_interleave(f),
            encoder_hidden_states=encoder_hidden_states.repeat_interleave(f, dim=0),
            return_dict=False,
        )[0]
        return out.unflatten(0, (b, f)).transpose(1, 2)
