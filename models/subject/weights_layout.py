"""Where the subject-driven family's pretrained files live under the model dir (their downloads:
models/fetch.py MANIFEST). Standard library only: the API process may import this (it never imports torch).

    {model_dir}/blipdiffusion/            Salesforce/blipdiffusion (Apache-2.0), diffusers layout:
        qformer/ text_encoder/ tokenizer/ unet/ vae/ scheduler/ image_processor/ [model_index.json]
    {model_dir}/bert-base-uncased/        the Q-Former's BERT tokenizer (the released Q-Former
                                          config names none, so diffusers would fetch
                                          "bert-base-uncased" from the Hub at construction)
    {model_dir}/stable-diffusion-v1-5/    SD 1.5 (also Tune-A-Video's base): the DreamBooth-LoRA base
    {model_dir}/clip-vit-base-patch32/    CLIP ViT-B/32 (CLIP-I, CLIP-T; also DiTCtrl's CSCV)
    {model_dir}/dino-vits16/              DINO ViT-S/16 (the DINO metric)

Each requirement is a tuple of alternatives relative to the model dir (one present is enough),
named by its first entry when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR_ENV = "VISIONJOBS_MODEL_DIR"

BLIPDIFFUSION_DIR = "blipdiffusion"
BERT_TOKENIZER_DIR = "bert-base-uncased"
SD15_DIR = "stable-diffusion-v1-5"  # the folder name is the base model id LoRA artifacts record
CLIP_B32_DIR = "clip-vit-base-patch32"
DINO_DIR = "dino-vits16"

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _alts(folder: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{folder}/{n}" for n in names)


def _sd_like(root: str, text_encoder: str = "text_encoder") -> list[tuple[str, ...]]:
    """unet, vae, a CLIP text tower, its tokenizer and the scheduler of an SD 1.x folder."""
    return [
        *[(f"{root}/{m}/config.json",) for m in ("unet", "vae", text_encoder)],
        *[_alts(f"{root}/{m}", DIFFUSERS_WEIGHTS) for m in ("unet", "vae")],
        _alts(f"{root}/{text_encoder}", TRANSFORMERS_WEIGHTS),
        # a fast tokenizer saves tokenizer.json; a slow one (the released folders) vocab.json + merges.txt
        (f"{root}/tokenizer/vocab.json", f"{root}/tokenizer/tokenizer.json"),
        (f"{root}/tokenizer/merges.txt", f"{root}/tokenizer/tokenizer.json"),
        (f"{root}/scheduler/scheduler_config.json",),
    ]


# in-context: BLIP-Diffusion (its text encoder is SD 1.5's CLIP tower, re-saved as ContextCLIPTextModel)
INCONTEXT_REQUIRED: list[tuple[str, ...]] = [
    *_sd_like(BLIPDIFFUSION_DIR),
    (f"{BLIPDIFFUSION_DIR}/qformer/config.json",),
    _alts(f"{BLIPDIFFUSION_DIR}/qformer", TRANSFORMERS_WEIGHTS),  # the release ships pytorch_model.bin
    (f"{BLIPDIFFUSION_DIR}/image_processor/preprocessor_config.json",),
    (f"{BERT_TOKENIZER_DIR}/vocab.txt", f"{BERT_TOKENIZER_DIR}/tokenizer.json"),
]
# expert: DreamBooth-LoRA on SD 1.5
EXPERT_REQUIRED: list[tuple[str, ...]] = _sd_like(SD15_DIR)
# DreamBench metrics
METRICS_REQUIRED: list[tuple[str, ...]] = [
    (f"{CLIP_B32_DIR}/config.json",),
    _alts(CLIP_B32_DIR, TRANSFORMERS_WEIGHTS),
    (f"{CLIP_B32_DIR}/vocab.json", f"{CLIP_B32_DIR}/tokenizer.json"),
    (f"{CLIP_B32_DIR}/merges.txt", f"{CLIP_B32_DIR}/tokenizer.json"),
    (f"{DINO_DIR}/config.json",),
    _alts(DINO_DIR, TRANSFORMERS_WEIGHTS),
]

REQUIRED: dict[str, list[tuple[str, ...]]] = {
    "in_context": INCONTEXT_REQUIRED,
    "expert": EXPERT_REQUIRED,
    "metrics": METRICS_REQUIRED,
}

# Where these come from: models/fetch.py MANIFEST, under the models.profiles entries
# subject.in_context, subject.expert and subject.metrics (`visionjobs models fetch --kind subject`).


def resolve_model_dir(model_dir: str | os.PathLike | None) -> Path | None:
    """An explicit model dir, else VISIONJOBS_MODEL_DIR, else None."""
    if model_dir is None:
        model_dir = os.environ.get(MODEL_DIR_ENV) or None
    return Path(model_dir).expanduser() if model_dir is not None else None


def missing_files(root: str | os.PathLike | None, required: list[tuple[str, ...]]) -> list[str]:
    """The requirements (named by their first alternative) absent under `root`; all of them
    when there is no root."""
    if root is None:
        return [alts[0] for alts in required]
    root = Path(root)
    return [alts[0] for alts in required if not any((root / a).is_file() for a in alts)]


def subject_weights_missing(component: str, model_dir: str | os.PathLike | None = None) -> list[str]:
    """Files of `component` ("in_context" | "expert" | "metrics") absent under the model dir."""
    if component not in REQUIRED:
        raise ValueError(f"unknown subject component {component!r}; use one of {', '.join(REQUIRED)}")
    return missing_files(resolve_model_dir(model_dir), REQUIRED[component])
