"""Model profiles and the one registry every pipeline loads through.

    tiny        the real architectures with tiny widths and seeded weights, built in code
    pretrained  diffusers-format folders under the model dir (VISIONJOBS_MODEL_DIR)
    auto        pretrained where all its files are present, else tiny (with a loud warning)

Each job kind registers a `KindSpec`: the files its pretrained profile needs (so a worker can
report not-ready before the first job) and a loader. Later kinds add theirs with `register`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

PROFILES = ("tiny", "pretrained", "auto")
MODEL_DIR_ENV = "VISIONJOBS_MODEL_DIR"

# diffusers/transformers save either format; any one of a group satisfies a requirement.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class WeightsMissing(RuntimeError):
    """The pretrained profile was asked for and some of its files are not there."""

    def __init__(self, kind: str, model_dir: Path | None, missing: list[str]):
        self.kind, self.model_dir, self.missing = kind, model_dir, missing
        where = str(model_dir) if model_dir is not None else f"(no model dir: {MODEL_DIR_ENV} is not set)"
        super().__init__(
            f"{kind}: pretrained weights missing under {where}: {', '.join(missing)}. "
            f"Set {MODEL_DIR_ENV} to the folder that holds them (see `visionjobs models fetch`), "
            f"or use the 'tiny' profile for development."
        )


@dataclass
class KindSpec:
    """What a job kind needs. `required` entries are relative to the model dir; each is a
    tuple of alternatives (one present is enough), named by its first entry when missing."""

    name: str
    loader: Callable  # (profile: "tiny"|"pretrained", model_dir, device, dtype, **kw) -> pipeline
    required: list[tuple[str, ...]] = field(default_factory=list)


REGISTRY: dict[str, KindSpec] = {}


def register(spec: KindSpec) -> KindSpec:
    REGISTRY[spec.name] = spec
    return spec


def _spec(kind: str) -> KindSpec:
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind]


def default_model_dir(model_dir: str | Path | None = None) -> Path | None:
    """An explicit model dir, else VISIONJOBS_MODEL_DIR, else None."""
    if model_dir is None:
        model_dir = os.environ.get(MODEL_DIR_ENV) or None
    return Path(model_dir).expanduser() if model_dir is not None else None


def required_weights(kind: str) -> list[str]:
    """Files (relative to the model dir) the pretrained profile of `kind` needs."""
    return [alts[0] for alts in _spec(kind).required]


def missing_weights(kind: str, model_dir: str | Path | None) -> list[str]:
    """Required files absent under `model_dir` (all of them when there is no model dir)."""
    model_dir = default_model_dir(model_dir)
    spec = _spec(kind)
    if model_dir is None:
        return [alts[0] for alts in spec.required]
    return [alts[0] for alts in spec.required if not any((model_dir / a).is_file() for a in alts)]


def resolve_profile(profile: str, model_dir: str | Path | None, kind: str = "colorize") -> str:
    """'tiny' | 'pretrained' for a requested profile. `auto` falls back to tiny, loudly."""
    if profile not in PROFILES:
        raise ValueError(f"unknown model profile {profile!r}; use one of {', '.join(PROFILES)}")
    if profile != "auto":
        return profile
    missing = missing_weights(kind, model_dir)
    if not missing:
        return "pretrained"
    log.warning(
        "!!! model profile 'auto' for %s: pretrained weights not found under %s (missing %s); "
        "using the TINY profile: random weights, outputs are NOT meaningful images. Set %s to real weights. !!!",
        kind, default_model_dir(model_dir) or f"<{MODEL_DIR_ENV} unset>", ", ".join(missing[:3])
        + (" ..." if len(missing) > 3 else ""), MODEL_DIR_ENV,
    )
    return "tiny"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """float16 on CUDA (what SD 1.5-family weights are usually run in; pass
    dtype=torch.bfloat16 to trade mantissa for range), float32 elsewhere (CPU half is slow)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load(kind: str, profile: str, model_dir: str | Path | None = None, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None, **kwargs):
    """Load the pipeline of `kind` for `profile`; sets `pipe.model_profile` to the profile
    actually used ('tiny' or 'pretrained'), which results report."""
    spec = _spec(kind)
    resolved = resolve_profile(profile, model_dir, kind)
    model_dir = default_model_dir(model_dir)
    if resolved == "pretrained":
        missing = missing_weights(kind, model_dir)
        if missing:
            raise WeightsMissing(kind, model_dir, missing)
    dtype = dtype or default_dtype(device)
    pipe = spec.loader(resolved, model_dir, device, dtype, **kwargs)
    pipe.model_profile = resolved
    return pipe


# ---------------------------------------------------------------- colorize (Control Color)

CONTROLCOLOR_DIR = "controlcolor"
PRETRAINED_SHORT_SIDE = 512  # the official demo's image_resolution
PRETRAINED_MAX_LONG_SIDE = 1536  # our cap (the official code squeezes sides >= 800 to 768)

_COLORIZE_REQUIRED = [
    *[(f"{CONTROLCOLOR_DIR}/{m}/config.json",) for m in ("unet", "controlnet", "vae")],
    *[tuple(f"{CONTROLCOLOR_DIR}/{m}/{w}" for w in _DIFFUSERS_WEIGHTS) for m in ("unet", "controlnet", "vae")],
    (f"{CONTROLCOLOR_DIR}/text_encoder/config.json",),
    tuple(f"{CONTROLCOLOR_DIR}/text_encoder/{w}" for w in _TRANSFORMERS_WEIGHTS),
    # a fast tokenizer saves tokenizer.json; a slow one (or a hand-made folder) vocab.json + merges
    (f"{CONTROLCOLOR_DIR}/tokenizer/tokenizer.json", f"{CONTROLCOLOR_DIR}/tokenizer/vocab.json"),
    (f"{CONTROLCOLOR_DIR}/scheduler/scheduler_config.json",),
]


def _load_colorize(profile: str, model_dir: Path | None, device, dtype, *, short_side: int | None = None,
                   max_long_side: int | None = None, seed: int = 0):
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from models.colorization.pipeline import ControlColorPipeline
    from models.colorization import tiny

    if profile == "tiny":
        components = tiny.tiny_components(seed)
        sizes = dict(short_side=tiny.TINY_SHORT_SIDE, max_long_side=tiny.TINY_MAX_LONG_SIDE)
    else:
        root = model_dir / CONTROLCOLOR_DIR
        kw = dict(local_files_only=True)  # never reach for the network from a worker
        # low_cpu_mem_usage needs `accelerate`; say False without it instead of a warning per model
        dkw = dict(kw, torch_dtype=dtype, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        components = dict(
            unet=UNet2DConditionModel.from_pretrained(root / "unet", **dkw),
            controlnet=ControlNetModel.from_pretrained(root / "controlnet", **dkw),
            vae=AutoencoderKL.from_pretrained(root / "vae", **dkw),
            # cast below: the dtype keyword of transformers' from_pretrained was renamed in v5
            text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer", **kw),
            scheduler=DDIMScheduler.from_pretrained(root / "scheduler", **kw),
        )
        sizes = dict(short_side=PRETRAINED_SHORT_SIDE, max_long_side=PRETRAINED_MAX_LONG_SIDE)
    if short_side is not None:
        sizes["short_side"] = short_side
    if max_long_side is not None:
        sizes["max_long_side"] = max_long_side
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        if components[name].dtype != dtype:  # cast only what differs: to() on a model warns
            components[name] = components[name].to(dtype)
    return ControlColorPipeline(**components, **sizes).to(device)


register(KindSpec("colorize", _load_colorize, _COLORIZE_REQUIRED))


def load_colorization(profile: str, model_dir: str | Path | None = None, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None, **kwargs):
    """The Control Color pipeline (`ControlColorPipeline`) for `profile`.

    kwargs: short_side / max_long_side override the profile's working size; seed (tiny)."""
    return load("colorize", profile, model_dir, device, dtype, **kwargs)
