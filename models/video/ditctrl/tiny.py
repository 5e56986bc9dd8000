"""Tiny and full-size random CogVideoX components for DiTCtrl.

`tiny_*`: the same component classes as CogVideoX-2B (CogVideoXTransformer3DModel with 3D
sin-cos positions and no RoPE, AutoencoderKLCogVideoX with 8x space / 4x time compression,
T5 v1.1 encoder, CogVideoXDPMScheduler) with tiny widths and seeded weights: a 13-frame segment
at 32x32 pixels is 4x4 latents, 2x2 patches per frame. Nothing is downloaded: the T5 tokenizer
(a SentencePiece-style Unigram model over single characters) is written out in code.

`full_*`: CogVideoX-2B's published configs with random weights (same FLOPs and memory as the
real model) for GPU benchmarks.
"""

from __future__ import annotations

import json
import string
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5EncoderModel, T5TokenizerFast

TINY_SIZE = 32  # pixels (width = height); 4x4 latents
TINY_TEXT_LEN = 32  # max_text_seq_length of the tiny transformer (2B: 226)
TINY_TEXT_DIM = 32

# CogVideoX-2B's scheduler_config.json (v-prediction, zero-SNR rescale, SNR shift 3, trailing).
COGVIDEOX_2B_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing",
)


@contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def scheduler() -> CogVideoXDPMScheduler:
    """The official sampler's math (VPSDEDPMPP2M) with CogVideoX-2B's training schedule."""
    return CogVideoXDPMScheduler(**COGVIDEOX_2B_SCHEDULER)


def tiny_tokenizer(model_max_length: int = TINY_TEXT_LEN) -> T5TokenizerFast:
    """T5's tokenizer layout (<pad>=0, </s>=1, <unk>=2, '▁'-prefixed pieces, '</s>' appended)
    with a character vocabulary, saved as tokenizer.json and loaded (works on transformers 4 and 5)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + c, -4.0) for c in chars] + [(c, -5.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(str(Path(tmp, "tokenizer.json")))
        Path(tmp, "tokenizer_config.json").write_text(json.dumps(dict(
            model_max_length=model_max_length, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        )), encoding="utf-8")
        return T5TokenizerFast.from_pretrained(tmp)


def tiny_text_encoder(vocab_size: int, d_model: int = TINY_TEXT_DIM, seed: int = 3) -> T5EncoderModel:
    """T5 v1.1 layout (gated-GELU feed-forward, relative position buckets), 2 layers."""
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    with _seeded(seed):
        return T5EncoderModel(config).eval()


def tiny_transformer(seed: int = 0, num_layers: int = 2, size: int = TINY_SIZE) -> CogVideoXTransformer3DModel:
    latent = size // 8
    with _seeded(seed):
        return CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=TINY_TEXT_DIM, num_layers=num_layers, sample_width=latent, sample_height=latent,
            sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TINY_TEXT_LEN,
        ).eval()


def tiny_vae(seed: int = 2, size: int = TINY_SIZE) -> AutoencoderKLCogVideoX:
    """4 levels (8x space), 4x time, 4 latent channels, 8 channels wide."""
    with _seeded(seed):
        return AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4, sample_height=size, sample_width=size,
        ).eval()


def tiny_components(seed: int = 0, num_layers: int = 2) -> dict:
    """All DiTCtrl pipeline components; the same seed gives bit-identical weights."""
    tokenizer = tiny_tokenizer()
    return dict(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed + 3),
        vae=tiny_vae(seed + 2),
        transformer=tiny_transformer(seed, num_layers=num_layers),
        scheduler=scheduler(),
    )


def tiny_clip_vision(seed: int = 5) -> CLIPVisionModel:
    """CLIP ViT layout at the metric's 224 px with ViT-B/32's patch size, 32 wide."""
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=224, patch_size=32, projection_dim=32)
    with _seeded(seed):
        return CLIPVisionModel(config).eval()


# ------------------------------------------------------------------ full-size, random weights

def full_components(device: str | torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """CogVideoX-2B transformer (30 layers, 30 heads x 64, 1.7B parameters) and VAE with random
    weights, built directly on `device`. The T5-XXL encoder is NOT built: it runs once per
    prompt (not per step), so the benchmark feeds random 226 x 4096 prompt embeddings and
    carries a 1-layer T5 of width 4096 only to satisfy the pipeline's interface."""
    tokenizer = tiny_tokenizer(model_max_length=226)
    with torch.device(device), _seeded(seed):
        transformer = CogVideoXTransformer3DModel().to(dtype).eval()  # the class defaults are 2B's config
        vae = AutoencoderKLCogVideoX().to(dtype).eval()  # likewise (scaling_factor 1.15258426)
        config = T5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                          feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        text_encoder = T5EncoderModel(config).to(dtype).eval()
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler())
