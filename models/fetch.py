"""`visionjobs models fetch`: download pretrained weights where the network allows.

Diffusers-format repositories land directly in the folder layout the `pretrained` profile
reads (`$VISIONJOBS_MODEL_DIR/<folder>`); the Control Color checkpoint lands in
`downloads/` and is converted by `visionjobs models convert-ctrlcolor`. Offline, every
missing item is named in the error instead of a stack trace.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Download:
    repo_id: str
    folder: str                      # under the model dir
    patterns: tuple[str, ...] = ()   # allow-list for snapshot_download; empty = whole repo
    purpose: str = ""


MANIFEST: dict[str, list[Download]] = {
    "colorize": [
        # Official Control Color release (S-Lab License 1.0, non-commercial).
        Download("zhexinliang/Control-Color", "downloads/control-color",
                 ("main_model.ckpt", "content-guided_deformable_vae.ckpt"),
                 "Control Color UNet + ControlNet + VAE + CLIP text weights; deformable decoder"),
        Download("openai/clip-vit-large-patch14", "downloads/clip-vit-large-patch14",
                 ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
                 "CLIP ViT-L/14 tokenizer and text config (the checkpoint holds the weights)"),
        Download("Salesforce/blip-image-captioning-base", "blip-image-captioning-base",
                 ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"),
                 "BLIP base (COCO captioning): the prompt of unconditional requests, as the official demo"),
    ],
    "video.generate": [
        Download("THUDM/CogVideoX-2b", "cogvideox-2b", (), "CogVideoX-2B transformer, VAE, T5 encoder (Apache-2.0 code, "
                                                           "CogVideoX licence weights)"),
        Download("openai/clip-vit-base-patch32", "clip-vit-base-patch32", (), "CLIP ViT-B/32 for the CSCV metric"),
    ],
    "video.edit": [
        Download("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5",
                 ("*.json", "*.txt", "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors"),
                 "Stable Diffusion 1.5 (CreativeML OpenRAIL-M) for Tune-A-Video"),
    ],
}


class FetchFailed(RuntimeError):
    pass


def fetch(kinds: list[str], model_dir: Path) -> list[Path]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # the API image has no ML stack
        raise FetchFailed("huggingface_hub is not installed: run this in the worker image") from exc
    unknown = [k for k in kinds if k not in MANIFEST]
    if unknown:
        raise FetchFailed(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(MANIFEST)}")
    fetched, failed = [], []
    for kind in kinds:
        for item in MANIFEST[kind]:
            dest = Path(model_dir) / item.folder
            try:
                snapshot_download(item.repo_id, local_dir=dest, allow_patterns=list(item.patterns) or None)
                fetched.append(dest)
            except Exception as exc:
                failed.append(f"{item.repo_id} -> {dest} ({type(exc).__name__})")
    if failed:
        raise FetchFailed("could not download (no network, or no access):\n  " + "\n  ".join(failed))
    return fetched
