"""Hub repositories in their real file layout, holding small-config weights written here, for
`tests/hubserver.HubServer`: every repository `models.fetch.MANIFEST` names.

    UPstud/ColorCtrl                   main_model.ckpt (Lightning, official ControlLDM key layout)
                                       + content-guided_deformable_vae.ckpt
    openai/clip-vit-large-patch14      CLIP config + tokenizer files (vocab.json, merges.txt, ...)
    Salesforce/blip-image-captioning-base   tiny BLIP captioner (+ .bin / .h5 decoys)
    THUDM/CogVideoX-2b                 diffusers folder; T5 tokenizer as spiece.model only; sharded T5
    openai/clip-vit-base-patch32       CLIPModel config + pytorch_model.bin (+ TF/Flax decoys)
    stable-diffusion-v1-5/...          diffusers folder (+ fp16 / non-ema / .ckpt decoys)
    timm/{wide_resnet50_2,resnet18}.tv_in1k   model.safetensors in torchvision's key names

Decoys are files the real repositories hold and fetch must not download.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

# Tiny Control Color architecture with SD-1.5's key structure (as tests/models/test_colorization_convert.py)
CC_TEXT_DIM = 32
CC_UNET = dict(sample_size=8, in_channels=9, out_channels=4,
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               block_out_channels=(16, 32, 32), layers_per_block=2, cross_attention_dim=CC_TEXT_DIM,
               attention_head_dim=8, norm_num_groups=8)
CC_CONTROLNET = dict(in_channels=4, conditioning_channels=3, down_block_types=CC_UNET["down_block_types"],
                     block_out_channels=(16, 32, 32), layers_per_block=2, cross_attention_dim=CC_TEXT_DIM,
                     attention_head_dim=8, norm_num_groups=8, conditioning_embedding_out_channels=(8, 8, 16, 16))
CC_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
              latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
# what `visionjobs models fetch --controlcolor-config` takes for this architecture
CC_CONVERT_CONFIG = {"unet": CC_UNET, "controlnet": CC_CONTROLNET, "vae": CC_VAE}

CLIP_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _decoy(path: Path, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"decoy " + bytes(size))


def clip_tokenizer_files(folder: Path) -> None:
    """CLIP's tokenizer files as the Hub repositories hold them (vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json), with the tiny vocabulary."""
    from models.colorization.tiny import MAX_TOKENS, _bytes_to_unicode

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    _write_json(folder / "tokenizer_config.json", {"model_max_length": MAX_TOKENS, "tokenizer_class": "CLIPTokenizer",
                                                   "do_lower_case": True, **CLIP_SPECIAL})
    _write_json(folder / "special_tokens_map.json", CLIP_SPECIAL)


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def _lightning(state_dict: dict) -> dict:
    sd = dict(state_dict)
    sd.update({"betas": torch.linspace(1e-4, 2e-2, 1000), "alphas_cumprod": torch.rand(1000), "logvar": torch.zeros(1000)})
    return {"state_dict": sd, "epoch": 1, "global_step": 10, "pytorch-lightning_version": "1.5.0",
            "optimizer_states": [], "lr_schedulers": []}


def controlcolor_repos(root: Path) -> dict[str, Path]:
    """UPstud/ColorCtrl (the checkpoints), openai/clip-vit-large-patch14 (tokenizer + config) and
    Salesforce/blip-image-captioning-base (the captioner)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPConfig

    from models.colorization import tiny
    from models.colorization.convert import deformable_state_dict_to_original, export_original_checkpoint
    from models.colorization.deformable import ContentGuidedVAE

    clip = root / "clip-vit-large-patch14"
    clip_tokenizer_files(clip)
    tokenizer = _clip_tokenizer(clip)
    text_encoder = tiny.tiny_text_encoder(tokenizer)
    CLIPConfig(text_config=text_encoder.config.to_dict(),
               vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8)).save_pretrained(clip)
    _write_json(clip / "preprocessor_config.json", {"crop_size": 224})
    _decoy(clip / "tf_model.h5")

    torch.manual_seed(0)
    unet, controlnet, vae = UNet2DConditionModel(**CC_UNET), ControlNetModel(**CC_CONTROLNET), AutoencoderKL(**CC_VAE)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                 controlnet.controlnet_cond_embedding.conv_out]:
        conv.reset_parameters()  # not zero-initialised: the ControlNet path matters
    ckpts = root / "ColorCtrl"
    ckpts.mkdir(parents=True)
    torch.save(_lightning(export_original_checkpoint(unet, controlnet, vae, text_encoder)), ckpts / "main_model.ckpt")
    torch.save(_lightning(deformable_state_dict_to_original(ContentGuidedVAE.from_vae(vae))),
               ckpts / "content-guided_deformable_vae.ckpt")
    (ckpts / "README.md").write_text("mirror\n")
    from tests.models.caption_dir import write_tiny_captioner

    blip = write_tiny_captioner(root / "blip", decoys=True)  # the captioner of empty prompts
    return {"UPstud/ColorCtrl": ckpts, "openai/clip-vit-large-patch14": clip,
            "Salesforce/blip-image-captioning-base": blip}


def _spiece_model(vocab_size: int = 48) -> bytes:
    import sentencepiece as spm

    text = ["a cat walks on green grass", "a dog runs in the park", "the sun sets over the sea",
            "a red car drives on a long road", "a fox jumps over a lazy dog"] * 10
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=out, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                   eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2,
                                   num_threads=1)
    return out.getvalue()


def cogvideox_repo(root: Path) -> dict[str, Path]:
    """THUDM/CogVideoX-2b: diffusers layout, T5 tokenizer as spiece.model (no tokenizer.json,
    as the real repository), the T5 encoder in shards with an index."""
    from diffusers import CogVideoXDDIMScheduler
    from transformers import T5TokenizerFast

    from models.video.ditctrl import tiny

    repo = root / "CogVideoX-2b"
    tok = repo / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "spiece.model").write_bytes(_spiece_model())
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(tok / "tokenizer_config.json", {"model_max_length": tiny.TINY_TEXT_LEN, "extra_ids": 0,
                                                "tokenizer_class": "T5Tokenizer", **special})
    _write_json(tok / "special_tokens_map.json", special)
    _write_json(tok / "added_tokens.json", {})
    tokenizer = T5TokenizerFast.from_pretrained(tok)
    tiny.tiny_text_encoder(len(tokenizer)).save_pretrained(repo / "text_encoder", max_shard_size="40KB")
    tiny.tiny_transformer().save_pretrained(repo / "transformer")
    tiny.tiny_vae().save_pretrained(repo / "vae")
    CogVideoXDDIMScheduler(**tiny.COGVIDEOX_2B_SCHEDULER).save_pretrained(repo / "scheduler")  # as shipped
    _write_json(repo / "model_index.json", {"_class_name": "CogVideoXPipeline"})
    _decoy(repo / "text_encoder" / "model.safetensors.index.fp16.json")
    return {"THUDM/CogVideoX-2b": repo}


def clip_b32_repo(root: Path) -> dict[str, Path]:
    """openai/clip-vit-base-patch32: a whole CLIPModel, PyTorch weights as pytorch_model.bin."""
    from transformers import CLIPConfig, CLIPModel

    from models.video.ditctrl import tiny

    repo = root / "clip-vit-base-patch32"
    vision = tiny.tiny_clip_vision().config.to_dict()
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=100), vision_config=vision,
                        projection_dim=32)
    torch.manual_seed(5)
    model = CLIPModel(config)
    repo.mkdir(parents=True)
    config.save_pretrained(repo)
    torch.save(model.state_dict(), repo / "pytorch_model.bin")
    clip_tokenizer_files(repo)
    for decoy in ("tf_model.h5", "flax_model.msgpack"):
        _decoy(repo / decoy)
    return {"openai/clip-vit-base-patch32": repo}


def sd15_repo(root: Path) -> dict[str, Path]:
    """stable-diffusion-v1-5/stable-diffusion-v1-5: diffusers layout with the variants it ships."""
    from diffusers import PNDMScheduler

    from models.video.tuneavideo.tiny import tiny_components

    repo = root / "stable-diffusion-v1-5"
    clip_tokenizer_files(repo / "tokenizer")
    parts = tiny_components()  # its tokenizer has the vocabulary clip_tokenizer_files writes
    assert len(parts["tokenizer"]) == len(_clip_tokenizer(repo / "tokenizer"))
    for name in ("unet", "vae", "text_encoder"):
        parts[name].save_pretrained(repo / name)
    PNDMScheduler.from_config(parts["scheduler"].config).save_pretrained(repo / "scheduler")  # SD 1.5 ships PNDM
    _write_json(repo / "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    _write_json(repo / "feature_extractor" / "preprocessor_config.json", {"crop_size": 224})
    for decoy in ("unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
                  "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.safetensors",
                  "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
                  "safety_checker/model.safetensors", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt"):
        _decoy(repo / decoy)
    return {"stable-diffusion-v1-5/stable-diffusion-v1-5": repo}


def _backbone_state_dict(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's key names and shapes, drawn directly (no module init:
    wide_resnet50_2 has 69M parameters); BatchNorm statistics not the identity, as trained ones."""
    import math

    from models.anomaly.backbone import ResNet

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ResNet(arch).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.long)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif name.endswith(("running_mean", "bias")):
            out[name] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BatchNorm weight
            out[name] = 1 + torch.randn(shape, generator=g) * 0.1
        else:  # conv / linear: Kaiming-normal scale
            out[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
    return out


def timm_repos(root: Path, archs=("wide_resnet50_2", "resnet18")) -> dict[str, Path]:
    """timm/<arch>.tv_in1k: model.safetensors with torchvision's key names (seeded weights; the
    architectures are fixed, so these are full size)."""
    from safetensors.torch import save_file

    repos = {}
    for i, arch in enumerate(archs):
        repo = root / f"{arch}.tv_in1k"
        repo.mkdir(parents=True)
        save_file(_backbone_state_dict(arch, 100 + i), repo / "model.safetensors")
        _write_json(repo / "config.json", {"architecture": arch, "num_classes": 1000})
        (repo / "README.md").write_text(f"{arch}\n")
        _decoy(repo / "pytorch_model.bin")
        repos[f"timm/{arch}.tv_in1k"] = repo
    return repos


def all_repos(root: Path) -> dict[str, Path]:
    repos: dict[str, Path] = {}
    for build in (controlcolor_repos, cogvideox_repo, clip_b32_repo, sd15_repo, timm_repos):
        repos.update(build(root))
    return repos
