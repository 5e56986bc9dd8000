"""Where Control Color's pretrained files live under the model dir. Standard library only: the
API process imports this to tell, before accepting a request, whether optional weights are
there (it must never import torch). `models.profiles` and the converter use the same names.

    {model_dir}/controlcolor/
        unet/ controlnet/ vae/ text_encoder/ tokenizer/ scheduler/   required (the released model)
        image_encoder/        optional: CLIP ViT-B/32 vision tower of an exemplar-trained checkpoint
        deformable_vae/       optional: the content-guided deformable VAE (its own diffusers folder)
    {guide_dir}/unet/ controlnet/   optional, any path: the weaker pair autoguidance uses
    {model_dir}/blip-image-captioning-base/   required: the BLIP captioner of unconditional
                          requests (a snapshot of Salesforce/blip-image-captioning-base)
"""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR_ENV = "VISIONJOBS_MODEL_DIR"
CONTROLCOLOR_DIR = "controlcolor"

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

# where `visionjobs models fetch` puts the official checkpoints and the CLIP ViT-L/14 tokenizer
# and text config the conversion needs (the converter's default --clip-dir)
CONTROLCOLOR_DOWNLOAD = "downloads/control-color"
CLIP_L14_DOWNLOAD = "downloads/clip-vit-large-patch14"
MAIN_CHECKPOINT = "main_model.ckpt"
DEFORMABLE_CHECKPOINT = "content-guided_deformable_vae.ckpt"

MAIN_COMPONENTS = ("unet", "controlnet", "vae", "text_encoder", "tokenizer", "scheduler")
EXEMPLAR_ENCODER = "image_encoder"
DEFORMABLE_VAE = "deformable_vae"
GUIDE_COMPONENTS = ("unet", "controlnet")
CAPTION_DIR = "blip-image-captioning-base"  # Salesforce/blip-image-captioning-base (BLIP base, COCO captions)


def _alternatives(folder: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{folder}/{n}" for n in names)


# Each requirement is a tuple of alternatives relative to the model dir (one present is
# enough), named by its first entry when missing.
COLORIZE_REQUIRED: list[tuple[str, ...]] = [
    *[(f"{CONTROLCOLOR_DIR}/{m}/config.json",) for m in ("unet", "controlnet", "vae")],
    *[_alternatives(f"{CONTROLCOLOR_DIR}/{m}", DIFFUSERS_WEIGHTS) for m in ("unet", "controlnet", "vae")],
    (f"{CONTROLCOLOR_DIR}/text_encoder/config.json",),
    _alternatives(f"{CONTROLCOLOR_DIR}/text_encoder", TRANSFORMERS_WEIGHTS),
    # a fast tokenizer saves tokenizer.json; a slow one (or a hand-made folder) vocab.json + merges
    (f"{CONTROLCOLOR_DIR}/tokenizer/tokenizer.json", f"{CONTROLCOLOR_DIR}/tokenizer/vocab.json"),
    (f"{CONTROLCOLOR_DIR}/scheduler/scheduler_config.json",),
]
# the captioner: model config + weights, the image processor config (the Hub repo has
# preprocessor_config.json; a newer save_pretrained writes processor_config.json) and the tokenizer
CAPTION_REQUIRED: list[tuple[str, ...]] = [
    (f"{CAPTION_DIR}/config.json",),
    _alternatives(CAPTION_DIR, TRANSFORMERS_WEIGHTS),
    (f"{CAPTION_DIR}/preprocessor_config.json", f"{CAPTION_DIR}/processor_config.json"),
    (f"{CAPTION_DIR}/tokenizer.json", f"{CAPTION_DIR}/vocab.txt"),
]
COLORIZE_REQUIRED += CAPTION_REQUIRED
EXEMPLAR_REQUIRED: list[tuple[str, ...]] = [
    (f"{CONTROLCOLOR_DIR}/{EXEMPLAR_ENCODER}/config.json",),
    _alternatives(f"{CONTROLCOLOR_DIR}/{EXEMPLAR_ENCODER}", TRANSFORMERS_WEIGHTS),
]
DEFORMABLE_REQUIRED: list[tuple[str, ...]] = [
    (f"{CONTROLCOLOR_DIR}/{DEFORMABLE_VAE}/config.json",),
    _alternatives(f"{CONTROLCOLOR_DIR}/{DEFORMABLE_VAE}", DIFFUSERS_WEIGHTS),
]
# relative to the guide dir itself (any diffusers folder with unet/ and controlnet/)
GUIDE_REQUIRED: list[tuple[str, ...]] = [
    *[(f"{m}/config.json",) for m in GUIDE_COMPONENTS],
    *[_alternatives(m, DIFFUSERS_WEIGHTS) for m in GUIDE_COMPONENTS],
]


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


def colorize_weights_missing(model_dir: str | os.PathLike | None = None) -> list[str]:
    """Files of the released Control Color model absent under the model dir."""
    return missing_files(resolve_model_dir(model_dir), COLORIZE_REQUIRED)


def exemplar_weights_missing(model_dir: str | os.PathLike | None = None) -> list[str]:
    """Files the exemplar mode needs that are absent under the model dir ([] = exemplars
    supported by the pretrained profile). The released checkpoint has none: it was not trained
    with the exemplar token; `convert_ctrlcolor` writes image_encoder/ only when a checkpoint
    carries the exemplar encoder's weights."""
    return missing_files(resolve_model_dir(model_dir), EXEMPLAR_REQUIRED)


def deformable_weights_missing(model_dir: str | os.PathLike | None = None) -> list[str]:
    """Files the content-guided deformable decoder needs that are absent under the model dir
    (written by `convert_ctrlcolor(..., deformable_vae_ckpt=...)`)."""
    return missing_files(resolve_model_dir(model_dir), DEFORMABLE_REQUIRED)


def guide_dir_path(guide_dir: str | os.PathLike | None, model_dir: str | os.PathLike | None = None) -> Path | None:
    """The autoguidance guide folder: absolute as given, relative ones under the model dir."""
    if guide_dir is None or str(guide_dir) == "":
        return None
    p = Path(guide_dir).expanduser()
    if not p.is_absolute():
        root = resolve_model_dir(model_dir)
        p = root / p if root is not None else p
    return p


def guide_weights_missing(guide_dir: str | os.PathLike | None, model_dir: str | os.PathLike | None = None) -> list[str]:
    """Files the autoguidance guide pair needs that are absent (named with the guide folder;
    `["<no guide dir configured>"]` when none is set)."""
    root = guide_dir_path(guide_dir, model_dir)
    if root is None:
        return ["<no guide dir configured>"]
    return [str(root / m) for m in missing_files(root, GUIDE_REQUIRED)]
