"""Content-guided deformable VAE decoder (Control Color's colour-overflow fix, default off).

Five modulated deformable 3x3 convolutions at latent resolution (512 channels in SD's VAE):
one after the decoder's `conv_in`, and two in each mid-block ResNet block (after `conv1` and
after `conv2`); each is added as a residual (`h = dcn(h, guide) + h`). Each predicts its
offsets and modulation from the features concatenated with a 4-channel guide: the resized L
image in [0, 1] through the (deformable) VAE's encoder, sampled, then `post_quant_conv` --
exactly the official `AutoencoderKL.get_gray_content_z` + `decode(z, gray_content_z)`.

torchvision is not available, so modulated deformable convolution (DCNv2,
`torchvision.ops.deform_conv2d` semantics, which the official weights were trained with) is
written here in plain torch with `grid_sample`, batched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Modulated deformable convolution, `torchvision.ops.deform_conv2d` semantics (one
    offset group, groups = 1).

    x (B, C, H, W); weight (O, C, kh, kw); offset (B, 2*kh*kw, Ho, Wo) with channel 2k the
    row (y) and 2k+1 the column (x) displacement of kernel tap k = i*kw + j; mask (B, kh*kw,
    Ho, Wo) multiplies each tap's sample (None = 1). Samples are bilinear; taps outside the
    input read 0 (torchvision's rule, which grid_sample's zero padding reproduces)."""
    B, C, H, W = x.shape
    O, Cw, kh, kw = weight.shape
    if Cw != C:
        raise ValueError(f"weight expects {Cw} input channels, x has {C}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    K = kh * kw
    if offset.shape != (B, 2 * K, Ho, Wo):
        raise ValueError(f"offset has shape {tuple(offset.shape)}, expected {(B, 2 * K, Ho, Wo)}")
    if mask is not None and mask.shape != (B, K, Ho, Wo):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(B, K, Ho, Wo)}")
    dev, dt = x.device, x.dtype
    # sampling positions (B, K, Ho, Wo) in input pixel indices
    ki = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dh  # tap row offsets
    kj = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dw  # tap column offsets
    oy = torch.arange(Ho, device=dev, dtype=dt) * sh - ph
    ox = torch.arange(Wo, device=dev, dtype=dt) * sw - pw
    py = oy.view(1, 1, Ho, 1) + ki.view(1, K, 1, 1) + offset[:, 0::2]
    px = ox.view(1, 1, 1, Wo) + kj.view(1, K, 1, 1) + offset[:, 1::2]
    # pixel index -> grid_sample's normalised coordinate (align_corners=False: index i sits at
    # (2i + 1) / size - 1), valid for any size including 1
    grid = torch.stack(((2 * px + 1) / W - 1, (2 * py + 1) / H - 1), dim=-1)  # (B, K, Ho, Wo, 2)
    cols = F.grid_sample(x, grid.view(B, K * Ho, Wo, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.view(B, C, K, Ho, Wo)
    if mask is not None:
        cols = cols * mask.unsqueeze(1)
    out = torch.einsum("bckhw,ock->bohw", cols, weight.reshape(O, C, K))
    if bias is not None:
        out = out + bias.view(1, O, 1, 1)
    return out


class DeformableConv2d(nn.Module):
    """The official `ModulatedDeformConvPack` with a guide: `conv_offset` (3x3) reads the
    features concatenated with the guide and predicts 3 * 9 channels, split as chunk(3) into
    (o1, o2, m); offset = cat(o1, o2) (torchvision's interleaved (y, x) per tap), modulation =
    sigmoid(m). Parameter names match the official state dict (weight, bias, conv_offset.*)."""

    def __init__(self, channels: int, guide_channels: int = 4, kernel_size: int = 3):
        super().__init__()
        self.channels, self.kernel_size, self.padding = channels, kernel_size, kernel_size // 2
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset = nn.Conv2d(channels + guide_channels, 3 * kernel_size * kernel_size, kernel_size,
                                     padding=self.padding)
        bound = 1.0 / (channels * kernel_size * kernel_size) ** 0.5  # the official init_weights
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)  # zero offsets, modulation 0.5 at init (official)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(torch.cat([x, guide.to(x.dtype)], dim=1))
        o1, o2, m = torch.chunk(out, 3, dim=1)
        return modulated_deform_conv2d(x, torch.cat([o1, o2], dim=1), torch.sigmoid(m), self.weight, self.bias,
                                       stride=1, padding=self.padding)


class ContentGuidedVAE(ModelMixin, ConfigMixin):
    """The official deformable VAE: a full KL autoencoder (its own weights: the official file
    holds its own encoder/decoder) plus the five deformable convolutions.

    State dict: `vae.*` (a diffusers AutoencoderKL), `dcn_in.*`, `dcn_mid.{0,1,2,3}.*` =
    official decoder.dcn_in, decoder.mid.block_1.dcn1, block_1.dcn2, block_2.dcn1, block_2.dcn2."""

    @register_to_config
    def __init__(self, vae_config: dict | None = None, guide_channels: int = 4):
        super().__init__()
        self.vae = AutoencoderKL(**(vae_config or {}))
        ch = self.vae.config.block_out_channels[-1]  # decoder width at latent resolution
        guide_channels = guide_channels or self.vae.config.latent_channels
        self.dcn_in = DeformableConv2d(ch, guide_channels)
        self.dcn_mid = nn.ModuleList([DeformableConv2d(ch, guide_channels) for _ in range(4)])

    @classmethod
    def from_vae(cls, vae: AutoencoderKL) -> "ContentGuidedVAE":
        """A ContentGuidedVAE whose `vae` has `vae`'s config (weights copied)."""
        config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        model = cls(vae_config=config, guide_channels=vae.config.latent_channels)
        model.vae.load_state_dict(vae.state_dict())
        return model

    @torch.no_grad()
    def encode_guide(self, l_image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The L image (B, 3, H, W) in [0, 1] -> sampled latent (B, 4, h, w), unscaled: the
        official `get_gray_content_z` feeds [0, 1] (not [-1, 1]) and samples the posterior."""
        x = l_image.to(device=self.device, dtype=self.dtype)
        return self.vae.encode(x).latent_dist.sample(generator)

    def _resnet(self, block, dcn1: DeformableConv2d, dcn2: DeformableConv2d, x, guide):
        """diffusers' ResnetBlock2D.forward (no time embedding, no resampling, as in the VAE
        mid block) with the official ResnetBlock_dcn's two residual deformable convs."""
        h = block.conv1(block.nonlinearity(block.norm1(x)))
        h = dcn1(h, guide) + h
        h = block.conv2(block.dropout(block.nonlinearity(block.norm2(h))))
        h = dcn2(h, guide) + h
        if block.conv_shortcut is not None:
            x = block.conv_shortcut(x)
        return (x + h) / block.output_scale_factor

    def decode(self, z: torch.Tensor, guide_z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, 4, h, w) and guide latents (B or 1, 4, h, w) -> images in
        about [-1, 1]. post_quant_conv applies to both (official `decode(z, gray_content_z)`)."""
        vae, dec = self.vae, self.vae.decoder
        z = z.to(device=self.device, dtype=self.dtype)
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
            guide = vae.post_quant_conv(guide_z.to(device=self.device, dtype=self.dtype))
        else:
            guide = guide_z.to(device=self.device, dtype=self.dtype)
        if guide.shape[0] != z.shape[0]:
            guide = guide.expand(z.shape[0], -1, -1, -1)
        h = dec.conv_in(z)
        h = self.dcn_in(h, guide) + h
        mid = dec.mid_block
        h = self._resnet(mid.resnets[0], self.dcn_mid[0], self.dcn_mid[1], h, guide)
        h = mid.attentions[0](h) if mid.attentions[0] is not None else h
        h = self._resnet(mid.resnets[1], self.dcn_mid[2], self.dcn_mid[3], h, guide)
        for up_block in dec.up_blocks:
            h = up_block(h)
        h = dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))
        return h
