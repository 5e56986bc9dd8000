"""The `tiny` profile: Control Color's architectures with tiny widths and seeded weights.

Same component classes and block types as SD 1.5 + ControlNet, so every code path (9-channel
inpainting UNet input, ControlNet residuals, 8x VAE, CLIP text tower, DDIM) is the real one;
only the widths shrink, so a 64x64 image denoises in milliseconds on a CPU. Outputs are not
meaningful images. Nothing is downloaded: the CLIP tokenizer is written out in code.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

from models.colorization.deformable import ContentGuidedVAE

# Working size of the tiny profile: shorter side 64 px -> 8x8 latents (SD's VAE factor 8).
TINY_SHORT_SIDE = 64
TINY_MAX_LONG_SIDE = 192  # 3x the short side, the same ratio as pretrained 1536 / 512

TEXT_DIM = 32  # tiny CLIP hidden size == UNet/ControlNet cross_attention_dim
MAX_TOKENS = 77  # CLIP context length, as in SD 1.5

# SD 1.5's block layout, truncated to two levels (one down-sampling step keeps 8x8 latents
# meaningful: 8x8 -> 4x4 in the mid block).
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")


@contextmanager
def _seeded(seed: int):
    """Seed construction without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_scheduler() -> DDIMScheduler:
    """DDIM with SD 1.5's training schedule. 'leading' spacing + steps_offset 1 gives the
    timesteps 951, 901, ..., 1 for 20 steps: the same as ldm's DDIMSampler ('uniform')
    used by the official code; set_alpha_to_one False matches its alphas_prev[0]."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def tiny_unet(seed: int = 0, block_out_channels: tuple[int, ...] = (32, 64)) -> UNet2DConditionModel:
    """Inpainting-layout UNet: 9 input channels = noisy latent 4 + mask 1 + masked-hint
    latent 4 (the order matters: it is the order the released weights were trained with)."""
    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=TINY_SHORT_SIDE // 8,
            in_channels=9,
            out_channels=4,
            down_block_types=DOWN_BLOCKS,
            up_block_types=UP_BLOCKS,
            block_out_channels=block_out_channels,
            layers_per_block=1,
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,  # legacy diffusers name: 8 heads, as SD 1.5
            norm_num_groups=min(32, block_out_channels[0]),
        )


def tiny_controlnet(seed: int = 1, block_out_channels: tuple[int, ...] = (32, 64)) -> ControlNetModel:
    """ControlNet over the 4-channel noisy latent with a 3-channel pixel hint. The hint
    embedding has four stages (three stride-2 convs) so it downsamples 8x, like SD's."""
    with _seeded(seed):
        net = ControlNetModel(
            in_channels=4,
            conditioning_channels=3,
            down_block_types=DOWN_BLOCKS,
            block_out_channels=block_out_channels,
            layers_per_block=1,
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=min(32, block_out_channels[0]),
            conditioning_embedding_out_channels=(8, 16, 16, 32),
        )
        # A fresh ControlNet zero-initialises its output convs (so training starts from the
        # base model). Random weights there instead: with zeros the hint would have no effect
        # in the tiny profile and the ControlNet path would go untested.
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.reset_parameters()
        return net


def tiny_vae(seed: int = 2) -> AutoencoderKL:
    """KL autoencoder with 4 levels (3 down-samplings = 8x, as SD's) and 4 latent channels."""
    with _seeded(seed):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=TINY_SHORT_SIDE,
            scaling_factor=0.18215,
        )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with CLIP's vocabulary layout (256 byte symbols, the same with
    '</w>', then the two special tokens) but no merges: every word splits into characters.
    Written to a temp dir and loaded, the path every transformers version supports."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(tmp, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_TOKENS)


def tiny_text_encoder(tokenizer: CLIPTokenizer, seed: int = 3) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",  # CLIP ViT-L/14's activation
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        return CLIPTextModel(config).eval()


EXEMPLAR_IMAGE_SIZE = 32  # tiny CLIP ViT: 32 px, patch 8 -> 16 patches + CLS
GUIDE_BLOCK_OUT_CHANNELS = (16, 32)  # the autoguidance guide: same family, half the width


def tiny_image_encoder(seed: int = 4) -> CLIPVisionModel:
    """CLIP ViT vision tower (the exemplar encoder; ViT-B/32 in the official design). Its width
    equals the text tower's, as ViT-B/32 (768) equals ViT-L/14 text (768): the pooled token is
    appended to the text tokens without a projection, as in the official code."""
    config = CLIPVisionConfig(
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=EXEMPLAR_IMAGE_SIZE,
        patch_size=8,
        hidden_act="quick_gelu",
        projection_dim=TEXT_DIM,
    )
    with _seeded(seed):
        return CLIPVisionModel(config).eval()


def tiny_deformable_vae(seed: int = 5, vae_seed: int = 2) -> ContentGuidedVAE:
    """The content-guided deformable VAE: the tiny VAE's weights (the official deformable VAE
    was trained from the SD VAE with only the deformable convs learning) plus five seeded
    deformable convs. Their offset predictors get small random weights instead of the
    official zero init, so the tiny offsets are non-zero and the deformable sampling path is
    exercised (zeros would make it a plain 0.5-modulated conv)."""
    base = tiny_vae(vae_seed)
    with _seeded(seed):
        model = ContentGuidedVAE.from_vae(base)
        for dcn in (model.dcn_in, *model.dcn_mid):
            torch.nn.init.normal_(dcn.conv_offset.weight, std=0.05)
            torch.nn.init.normal_(dcn.conv_offset.bias, std=0.5)
            dcn.weight.data.mul_(0.5)
    return model.eval()


def tiny_guide_pair(seed: int = 10) -> tuple[UNet2DConditionModel, ControlNetModel]:
    """The autoguidance guide: a (UNet, ControlNet) pair of the same family with fewer channels
    (Karras et al. use a smaller, less-trained model of the same family)."""
    return (tiny_unet(seed, GUIDE_BLOCK_OUT_CHANNELS).eval(),
            tiny_controlnet(seed + 1, GUIDE_BLOCK_OUT_CHANNELS).eval())


def tiny_components(seed: int = 0, optional: bool = True) -> dict:
    """All pipeline components; the same seed gives bit-identical weights. `optional` adds the
    exemplar encoder, the deformable VAE and the autoguidance guide pair. The BLIP captioner
    (required, as in the pretrained profile) is always there."""
    from models.colorization.caption import tiny_captioner

    tokenizer = tiny_tokenizer()
    caption_model, caption_processor = tiny_captioner(seed + 6)
    components = dict(
        caption_model=caption_model,
        caption_processor=caption_processor,
        vae=tiny_vae(seed + 2).eval(),
        text_encoder=tiny_text_encoder(tokenizer, seed + 3),
        tokenizer=tokenizer,
        unet=tiny_unet(seed).eval(),
        controlnet=tiny_controlnet(seed + 1).eval(),
        scheduler=tiny_scheduler(),
    )
    if optional:
        guide_unet, guide_controlnet = tiny_guide_pair(seed + 10)
        components.update(
            image_encoder=tiny_image_encoder(seed + 4),
            deformable_vae=tiny_deformable_vae(seed + 5, vae_seed=seed + 2),
            guide_unet=guide_unet,
            guide_controlnet=guide_controlnet,
        )
    return components
