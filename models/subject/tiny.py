"""The `tiny` profile of the subject-driven family: the real architectures, tiny widths, seeded
weights, every tokenizer written out in code (nothing is downloaded).

    in-context  BLIP-Diffusion: a Q-Former (ViT image encoder + BERT-layout query transformer
                + projection), the context CLIP text tower, SD's UNet / VAE, PNDM
    expert      SD 1.5 for DreamBooth-LoRA: UNet, VAE, CLIP text tower, PNDM
    metrics     CLIP (vision + text, projected) at 224 px with ViT-B/32's patch, and a ViT
                with dino-vits16's layout (patch 16, 224 px, qkv bias)

The SD parts reuse the colorization profile's builders (VAE, CLIP tokenizer and text config)
and Tune-A-Video's 4-channel UNet. Outputs are not meaningful images.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from diffusers.pipelines.deprecated.blip_diffusion import BlipImageProcessor
from transformers import Blip2Config, CLIPConfig, CLIPModel, CLIPTextConfig, ViTConfig, ViTModel

from models.colorization import tiny as base
from models.subject.blip import SubjectQFormer, SubjectTextEncoder
from models.video.tuneavideo.tiny import tiny_video_unet

TINY_SIZE = 64  # generated images: 64x64 px -> 8x8 latents
TINY_TEXT_DIM = base.TEXT_DIM  # 32: CLIP text width == Q-Former width == UNet cross-attention dim
TINY_QUERY_TOKENS = 4  # released: 16
TINY_SUBJECT_IMAGE_SIZE = 32  # Q-Former image input (released: 224), patch 8 -> 16 patches + CLS
TINY_BASE_MODEL_ID = "tiny-sd"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# SD 1.5's scheduler folder (PNDM, PLMS steps only); BLIP-Diffusion samples with the same.
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon")

_seeded = base._seeded


def scheduler() -> PNDMScheduler:
    return PNDMScheduler(**SD15_SCHEDULER)


def bert_vocab() -> list[str]:
    """A BERT WordPiece vocabulary over single characters ([PAD] = 0, as BERT's)."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]


def write_bert_tokenizer(folder: str | Path) -> Path:
    """The tiny BERT tokenizer as a `vocab.txt` folder (what `BertTokenizer.from_pretrained` reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n", encoding="utf-8")
    return folder


def tiny_qformer(seed: int = 6) -> SubjectQFormer:
    """Q-Former with BLIP-Diffusion's structure (cross-attention in every layer, 2 FFNs per
    layer, projection layer), 32 wide, 2 layers, 4 queries, over a 1-layer ViT at 32 px."""
    vocab = bert_vocab()
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=TINY_SUBJECT_IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu",
                           initializer_range=0.02),  # the config's default 1e-10 makes a constant image encoder
        qformer_config=dict(vocab_size=len(vocab) + 1, hidden_size=TINY_TEXT_DIM, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                            cross_attention_frequency=1, encoder_hidden_size=32, initializer_range=0.02),  # +1: [DEC]
        num_query_tokens=TINY_QUERY_TOKENS,
    )
    with tempfile.TemporaryDirectory() as tmp, _seeded(seed):
        config.tokenizer = str(write_bert_tokenizer(tmp))  # read once, in the constructor
        model = SubjectQFormer(config)
        # A fresh model starts its queries at zero (BLIP-2 init); seeded noise instead, so tiny
        # queries differ from each other and the subject path is exercised.
        torch.nn.init.normal_(model.query_tokens, std=0.5)
    model.config.tokenizer = None
    return model.eval()


def tiny_text_config(tokenizer) -> CLIPTextConfig:
    """The colorization profile's tiny CLIP text tower config (SD 1.5's layout, 32 wide)."""
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TINY_TEXT_DIM, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=base.MAX_TOKENS,
                          hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def tiny_context_text_encoder(tokenizer, seed: int = 3) -> SubjectTextEncoder:
    with _seeded(seed):
        return SubjectTextEncoder(tiny_text_config(tokenizer)).eval()


def tiny_image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": TINY_SUBJECT_IMAGE_SIZE, "width": TINY_SUBJECT_IMAGE_SIZE},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    return tiny_video_unet(seed).eval()


def tiny_vae(seed: int = 2) -> AutoencoderKL:
    return base.tiny_vae(seed).eval()


def tiny_incontext_components(seed: int = 0) -> dict:
    """BLIP-Diffusion pipeline components; the same seed gives bit-identical weights."""
    tokenizer = base.tiny_tokenizer()
    return dict(
        tokenizer=tokenizer,
        text_encoder=tiny_context_text_encoder(tokenizer, seed + 3),
        vae=tiny_vae(seed + 2),
        unet=tiny_unet(seed),
        scheduler=scheduler(),
        qformer=tiny_qformer(seed + 6),
        image_processor=tiny_image_processor(),
    )


def tiny_expert_components(seed: int = 0) -> dict:
    """SD 1.5 components for DreamBooth-LoRA; the same seed gives bit-identical weights."""
    tokenizer = base.tiny_tokenizer()
    return dict(
        vae=tiny_vae(seed + 2),
        text_encoder=base.tiny_text_encoder(tokenizer, seed + 3),
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=scheduler(),
    )


def tiny_clip(tokenizer, seed: int = 7) -> CLIPModel:
    """CLIP with ViT-B/32's image size and patch (224, 32 -> 49 patches), 32 wide, projected to 16."""
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).to_dict()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=224, patch_size=32)
    with _seeded(seed):
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


def tiny_dino(seed: int = 8) -> ViTModel:
    """dino-vits16's layout (patch 16 at 224 px, qkv bias, LayerNorm eps 1e-6), 32 wide, 2 layers."""
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-6)
    with _seeded(seed):
        return ViTModel(config, add_pooling_layer=False).eval()


def tiny_metric_components(seed: int = 0) -> dict:
    tokenizer = base.tiny_tokenizer()
    return dict(clip=tiny_clip(tokenizer, seed + 7), clip_tokenizer=tokenizer, dino=tiny_dino(seed + 8))
