"""Build the subject-driven pipelines for a profile (tiny | pretrained | auto).

    load_subject_incontext(profile, model_dir=None, device="cpu", dtype=None, seed=0)
        -> InContextSubjectPipeline   (BLIP-Diffusion)
    load_subject_expert(profile, model_dir=None, device="cpu", dtype=None, seed=0)
        -> DreamBoothLoRAPipeline     (SD 1.5 + peft LoRA)
    load_subject_metrics(profile, model_dir=None, device="cpu", dtype=None, seed=0)
        -> DreamBenchScorer           (CLIP ViT-B/32 + DINO ViT-S/16)

Each sets `.model_profile` ("tiny" | "pretrained"). The `build_*` functions take the
`models.profiles.KindSpec.loader` arguments (resolved profile, model dir, device, dtype), so a
kind registry can call them as they are (models/profiles.py registers them as
subject.in_context, subject.expert and subject.metrics); `weights_layout.REQUIRED` lists their files.
Pretrained loading never reaches for the network (local_files_only) and names every missing
file before it starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from models.weights import PROFILES, WeightsMissing, default_dtype
from models.subject import weights_layout as layout

log = logging.getLogger(__name__)

PRETRAINED_SIZE = 512  # SD 1.5 and BLIP-Diffusion's resolution
COMPONENT_KIND = {"in_context": "subject (in-context)", "expert": "subject (expert)", "metrics": "subject (metrics)"}


def _kw(dtype):
    kw = dict(local_files_only=True)
    # low_cpu_mem_usage needs `accelerate`; say False without it instead of a warning per model
    return kw, dict(kw, torch_dtype=dtype, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)


def _cast(module, dtype):
    return module if module.dtype == dtype else module.to(dtype)  # to() on a model warns when it changes nothing


def build_incontext(profile: str, model_dir: Path | None, device, dtype: torch.dtype, *, seed: int = 0):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.blip_diffusion import BlipImageProcessor
    from transformers import Blip2Config, CLIPTokenizer

    from models.subject import tiny
    from models.subject.blip import SubjectQFormer, SubjectTextEncoder
    from models.subject.incontext import InContextSubjectPipeline

    if profile == "tiny":
        components = tiny.tiny_incontext_components(seed)
        extra = dict(default_size=tiny.TINY_SIZE)
    else:
        root = model_dir / layout.BLIPDIFFUSION_DIR
        kw, dkw = _kw(dtype)
        qconfig = Blip2Config.from_pretrained(root / "qformer", **kw)
        # the released config names no tokenizer (diffusers would fetch bert-base-uncased)
        qconfig.tokenizer = str(model_dir / layout.BERT_TOKENIZER_DIR)
        components = dict(
            # kept float32: it runs once per request, and transformers keeps BLIP-2's Q-Former fp32 too
            qformer=SubjectQFormer.from_pretrained(root / "qformer", config=qconfig, **kw),
            text_encoder=SubjectTextEncoder.from_pretrained(root / "text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer", **kw),
            unet=UNet2DConditionModel.from_pretrained(root / "unet", **dkw),
            vae=AutoencoderKL.from_pretrained(root / "vae", **dkw),
            scheduler=PNDMScheduler.from_pretrained(root / "scheduler", **kw),
            image_processor=BlipImageProcessor.from_pretrained(root / "image_processor", **kw),
        )
        index = root / "model_index.json"
        meta = json.loads(index.read_text()) if index.is_file() else {}
        extra = {k: meta[k] for k in ("ctx_begin_pos", "mean", "std") if meta.get(k) is not None}
        extra["default_size"] = PRETRAINED_SIZE
    for name in ("unet", "vae", "text_encoder"):
        components[name] = _cast(components[name], dtype)
    pipe = InContextSubjectPipeline(**components, **extra)
    pipe.set_progress_bar_config(disable=True)  # workers report progress through the step callback
    return pipe.to(device)


def build_expert(profile: str, model_dir: Path | None, device, dtype: torch.dtype, *, seed: int = 0):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from models.subject import tiny
    from models.subject.expert import DreamBoothLoRAPipeline

    if profile == "tiny":
        components = tiny.tiny_expert_components(seed)
        extra = dict(base_model_id=f"{tiny.TINY_BASE_MODEL_ID}-seed{seed}", default_size=tiny.TINY_SIZE)
    else:
        root = model_dir / layout.SD15_DIR
        kw, dkw = _kw(dtype)
        components = dict(
            unet=UNet2DConditionModel.from_pretrained(root / "unet", **dkw),
            vae=AutoencoderKL.from_pretrained(root / "vae", **dkw),
            text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", **kw),
            tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer", **kw),
            scheduler=PNDMScheduler.from_pretrained(root / "scheduler", **kw),
        )
        extra = dict(base_model_id=layout.SD15_DIR, default_size=PRETRAINED_SIZE)
    for name in ("unet", "vae", "text_encoder"):
        components[name] = _cast(components[name], dtype)
    pipe = DreamBoothLoRAPipeline(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def build_metrics(profile: str, model_dir: Path | None, device, dtype: torch.dtype, *, seed: int = 0):
    from transformers import CLIPModel, CLIPTokenizer, ViTModel

    from models.subject import tiny
    from models.subject.metrics import DreamBenchScorer

    if profile == "tiny":
        c = tiny.tiny_metric_components(seed)
        clip, tokenizer, dino = c["clip"], c["clip_tokenizer"], c["dino"]
    else:
        kw, _ = _kw(dtype)
        clip = CLIPModel.from_pretrained(model_dir / layout.CLIP_B32_DIR, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(model_dir / layout.CLIP_B32_DIR, **kw)
        dino = ViTModel.from_pretrained(model_dir / layout.DINO_DIR, add_pooling_layer=False, **kw)
    return DreamBenchScorer(_cast(clip, dtype), tokenizer, _cast(dino, dtype)).to(device)


BUILDERS = {"in_context": build_incontext, "expert": build_expert, "metrics": build_metrics}


def resolve_profile(component: str, profile: str, model_dir) -> str:
    """'tiny' | 'pretrained'. `auto` falls back to tiny, loudly, when files are missing."""
    if profile not in PROFILES:
        raise ValueError(f"unknown model profile {profile!r}; use one of {', '.join(PROFILES)}")
    if profile != "auto":
        return profile
    missing = layout.subject_weights_missing(component, model_dir)
    if not missing:
        return "pretrained"
    log.warning("!!! model profile 'auto' for %s: pretrained weights missing (%s); using the TINY profile: random "
                "weights, outputs are NOT meaningful images. Set %s to real weights. !!!", COMPONENT_KIND[component],
                ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""), layout.MODEL_DIR_ENV)
    return "tiny"


def load(component: str, profile: str, model_dir=None, device="cpu", dtype: torch.dtype | None = None, **kwargs):
    resolved = resolve_profile(component, profile, model_dir)
    root = layout.resolve_model_dir(model_dir)
    if resolved == "pretrained":
        missing = layout.missing_files(root, layout.REQUIRED[component])
        if missing:
            raise WeightsMissing(COMPONENT_KIND[component], root, missing)
    obj = BUILDERS[component](resolved, root, device, dtype or default_dtype(device), **kwargs)
    obj.model_profile = resolved
    return obj


def load_subject_incontext(profile: str, model_dir=None, device="cpu", dtype=None, **kwargs):
    """The BLIP-Diffusion pipeline (`InContextSubjectPipeline`); kwargs: seed (tiny weights)."""
    return load("in_context", profile, model_dir, device, dtype, **kwargs)


def load_subject_expert(profile: str, model_dir=None, device="cpu", dtype=None, **kwargs):
    """The DreamBooth-LoRA pipeline (`DreamBoothLoRAPipeline`); kwargs: seed (tiny weights)."""
    return load("expert", profile, model_dir, device, dtype, **kwargs)


def load_subject_metrics(profile: str, model_dir=None, device="cpu", dtype=None, **kwargs):
    """The DreamBench scorer (`DreamBenchScorer`); kwargs: seed (tiny weights)."""
    return load("metrics", profile, model_dir, device, dtype, **kwargs)
