"""`visionjobs models fetch`: download pretrained weights where the network allows.

Files land under `{model_dir}/downloads/{repo}/`; the Control Color checkpoint is then
converted to diffusers folders by `visionjobs models convert-ctrlcolor`. Offline, every
missing file is named in the error instead of a stack trace.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Download:
    repo_id: str
    filenames: tuple[str, ...]
    purpose: str


MANIFEST: dict[str, list[Download]] = {
    "colorize": [
        # Official Control Color release (S-Lab License 1.0, non-commercial).
        Download("zhexinliang/Control-Color", ("main_model.ckpt", "content-guided_deformable_vae.ckpt"),
                 "Control Color UNet + ControlNet + VAE + CLIP text weights; deformable decoder"),
        # Tokenizer and text-encoder config of CLIP ViT-L/14 (the checkpoint holds the weights).
        Download("openai/clip-vit-large-patch14",
                 ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
                 "CLIP ViT-L/14 tokenizer and config"),
    ],
}


class FetchFailed(RuntimeError):
    pass


def fetch(kinds: list[str], model_dir: Path) -> list[Path]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # the API image has no ML stack
        raise FetchFailed("huggingface_hub is not installed: run this in the worker image") from exc
    fetched, failed = [], []
    for kind in kinds:
        if kind not in MANIFEST:
            raise FetchFailed(f"unknown kind {kind!r}; known: {', '.join(MANIFEST)}")
        for item in MANIFEST[kind]:
            dest = Path(model_dir) / "downloads" / item.repo_id.replace("/", "--")
            for name in item.filenames:
                try:
                    fetched.append(Path(hf_hub_download(item.repo_id, name, local_dir=dest)))
                except Exception as exc:
                    failed.append(f"{item.repo_id}/{name} ({type(exc).__name__})")
    if failed:
        raise FetchFailed("could not download (no network, or no access):\n  " + "\n  ".join(failed))
    return fetched
