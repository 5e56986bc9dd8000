"""Model profiles and the one registry every pipeline loads through.

    tiny        the real architectures with tiny widths and seeded weights, built in code
    pretrained  diffusers-format folders under the model dir (VISIONJOBS_MODEL_DIR)
    auto        pretrained where all its files are present, else tiny (with a loud warning)

Each model registers a `ModelSpec` under a name: a loader and the files its pretrained profile
needs (so a worker can report not-ready before the first job, and `visionjobs models check`
can name what is missing). Job kinds (service/kinds.py) name the entries they load in
`JobKind.models`; their downloads live under the same names in models/fetch.py. Importing
this module does not import torch (each loader imports what it needs).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)
# the basics the loaders share live in models/weights.py (so loaders import it, not this module)
from models.weights import (  # noqa: E402,F401  (re-exported for callers)
    MODEL_DIR_ENV, PROFILES, WeightsMissing, default_dtype, default_model_dir,
)


# diffusers/transformers save either format; any one of a group satisfies a requirement.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class ModelSpec:
    """One loadable model. `required` entries are relative to the model dir; each is a
    tuple of alternatives (one present is enough), named by its first entry when missing."""

    name: str
    loader: Callable  # (profile: "tiny"|"pretrained", model_dir, device, dtype, **kw) -> pipeline
    required: list[tuple[str, ...]] = field(default_factory=list)


KindSpec = ModelSpec  # the earlier name
REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def _spec(kind: str) -> ModelSpec:
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind]


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


def resolve_profile(profile: str, model_dir: str | Path | None, kind: str | Sequence[str] = "colorize") -> str:
    """'tiny' | 'pretrained' for a requested profile and one model (or every model a job kind
    loads: pretrained only when all of them are present). `auto` falls back to tiny, loudly."""
    if profile not in PROFILES:
        raise ValueError(f"unknown model profile {profile!r}; use one of {', '.join(PROFILES)}")
    names = [kind] if isinstance(kind, str) else list(kind)
    for name in names:
        _spec(name)  # unknown names fail whatever the profile
    if profile != "auto":
        return profile
    missing = [m for name in names for m in missing_weights(name, model_dir)]
    if not missing:
        return "pretrained"
    log.warning(
        "!!! model profile 'auto' for %s: pretrained weights not found under %s (missing %s); "
        "using the TINY profile: random weights, outputs are NOT meaningful. Set %s to real weights. !!!",
        "+".join(names), default_model_dir(model_dir) or f"<{MODEL_DIR_ENV} unset>", ", ".join(missing[:3])
        + (" ..." if len(missing) > 3 else ""), MODEL_DIR_ENV,
    )
    return "tiny"


def load(kind: str, profile: str, model_dir: str | Path | None = None, device: "str | torch.device" = "cpu",
         dtype: "torch.dtype | None" = None, **kwargs):
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

# Path constants live in a torch-free module the API process can import (it must never import
# torch, and this module does).
from models.colorization import weights_layout as _cc_layout  # noqa: E402
from models.colorization.weights_layout import (  # noqa: E402,F401  (re-exported for callers)
    deformable_weights_missing,
    exemplar_weights_missing,
    guide_weights_missing,
)

CONTROLCOLOR_DIR = _cc_layout.CONTROLCOLOR_DIR
PRETRAINED_SHORT_SIDE = 512  # the official demo's image_resolution
PRETRAINED_MAX_LONG_SIDE = 1536  # our cap (the official code squeezes sides >= 800 to 768)

_COLORIZE_REQUIRED = _cc_layout.COLORIZE_REQUIRED


def _load_colorize(profile: str, model_dir: Path | None, device, dtype, *, short_side: int | None = None,
                   max_long_side: int | None = None, seed: int = 0, guide_dir: str | Path | None = None,
                   optional: bool = True):
    """tiny: everything built in code, optional parts included (exemplar encoder, deformable
    VAE, a narrower guide pair). pretrained: the released model; the optional parts when their
    folders exist (image_encoder/, deformable_vae/ under controlcolor/; the guide pair from
    `guide_dir`, absolute or relative to the model dir). What is missing is recorded on
    `pipe.missing_optional` and named in the error a request for that feature gets."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    from models.colorization import tiny
    from models.colorization.deformable import ContentGuidedVAE
    from models.colorization.pipeline import ControlColorPipeline

    missing: dict[str, list[str]] = {}
    if profile == "tiny":
        components = tiny.tiny_components(seed, optional=optional)
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
            # the official demo's BLIP captioner for empty prompts (models.colorization.caption)
            caption_model=BlipForConditionalGeneration.from_pretrained(model_dir / _cc_layout.CAPTION_DIR, **kw),
            caption_processor=BlipProcessor.from_pretrained(model_dir / _cc_layout.CAPTION_DIR, **kw),
        )
        if optional:
            absent = _cc_layout.missing_files(model_dir, _cc_layout.EXEMPLAR_REQUIRED)
            if absent:
                missing["exemplar"] = absent
            else:
                components["image_encoder"] = CLIPVisionModel.from_pretrained(root / _cc_layout.EXEMPLAR_ENCODER, **kw)
            absent = _cc_layout.missing_files(model_dir, _cc_layout.DEFORMABLE_REQUIRED)
            if absent:
                missing["deformable_decoder"] = absent
            else:
                components["deformable_vae"] = ContentGuidedVAE.from_pretrained(root / _cc_layout.DEFORMABLE_VAE, **dkw)
            guide_root = _cc_layout.guide_dir_path(guide_dir, model_dir)
            if guide_root is None:
                missing["autoguidance"] = ["a guide dir (a diffusers folder with unet/ and controlnet/; "
                                           "pass guide_dir, absolute or relative to the model dir)"]
            else:
                absent = _cc_layout.missing_files(guide_root, _cc_layout.GUIDE_REQUIRED)
                if absent:  # configured but broken: the worker is not ready, loudly
                    raise WeightsMissing("colorize (autoguidance guide)", guide_root, absent)
                components["guide_unet"] = UNet2DConditionModel.from_pretrained(guide_root / "unet", **dkw)
                components["guide_controlnet"] = ControlNetModel.from_pretrained(guide_root / "controlnet", **dkw)
        sizes = dict(short_side=PRETRAINED_SHORT_SIDE, max_long_side=PRETRAINED_MAX_LONG_SIDE)
    if short_side is not None:
        sizes["short_side"] = short_side
    if max_long_side is not None:
        sizes["max_long_side"] = max_long_side
    for name in ("unet", "controlnet", "vae", "text_encoder", "image_encoder", "deformable_vae",
                 "guide_unet", "guide_controlnet", "caption_model"):
        if components.get(name) is not None and components[name].dtype != dtype:
            components[name] = components[name].to(dtype)  # cast only what differs: to() on a model warns
    pipe = ControlColorPipeline(**components, **sizes).to(device)
    pipe.missing_optional = missing
    return pipe


register(ModelSpec("colorize", _load_colorize, _COLORIZE_REQUIRED))


def load_colorization(profile: str, model_dir: str | Path | None = None, device: "str | torch.device" = "cpu",
                      dtype: "torch.dtype | None" = None, **kwargs):
    """The Control Color pipeline (`ControlColorPipeline`) for `profile`.

    kwargs: short_side / max_long_side override the profile's working size; seed (tiny);
    guide_dir (pretrained: the autoguidance guide, a diffusers folder with unet/ and
    controlnet/); optional=False skips the optional parts (exemplar, deformable, guide)."""
    return load("colorize", profile, model_dir, device, dtype, **kwargs)


# ---------------------------------------------------------------- video.edit (Tune-A-Video)

# Any SD 1.x text-to-image diffusers folder (the official configs use v1-4; v1-5 is the same
# architecture). Its folder name is the base model id recorded in tuned-model artifacts.
TUNEAVIDEO_BASE_DIR = "stable-diffusion-v1-5"

_VIDEO_EDIT_REQUIRED = [
    *[(f"{TUNEAVIDEO_BASE_DIR}/{m}/config.json",) for m in ("unet", "vae")],
    *[tuple(f"{TUNEAVIDEO_BASE_DIR}/{m}/{w}" for w in _DIFFUSERS_WEIGHTS) for m in ("unet", "vae")],
    (f"{TUNEAVIDEO_BASE_DIR}/text_encoder/config.json",),
    tuple(f"{TUNEAVIDEO_BASE_DIR}/text_encoder/{w}" for w in _TRANSFORMERS_WEIGHTS),
    (f"{TUNEAVIDEO_BASE_DIR}/tokenizer/tokenizer.json", f"{TUNEAVIDEO_BASE_DIR}/tokenizer/vocab.json"),
    (f"{TUNEAVIDEO_BASE_DIR}/scheduler/scheduler_config.json",),
]


def _load_video_edit(profile: str, model_dir: Path | None, device, dtype, *, seed: int = 0, inflate_seed: int = 0):
    from models.video.tuneavideo.loader import build_pipeline

    root = model_dir / TUNEAVIDEO_BASE_DIR if model_dir is not None else None
    return build_pipeline(profile, root, TUNEAVIDEO_BASE_DIR, device, dtype, seed=seed, inflate_seed=inflate_seed)


register(ModelSpec("video.edit", _load_video_edit, _VIDEO_EDIT_REQUIRED))


def load_video_edit(profile: str, model_dir: str | Path | None = None, device: "str | torch.device" = "cpu",
                    dtype: "torch.dtype | None" = None, **kwargs):
    """The Tune-A-Video pipeline (`TuneAVideoPipeline`) for `profile`.

    kwargs: seed (tiny weights), inflate_seed (init of the temporal attentions)."""
    return load("video.edit", profile, model_dir, device, dtype, **kwargs)


# ---------------------------------------------------------------- video.generate (DiTCtrl on CogVideoX)

COGVIDEOX_DIR = "cogvideox-2b"  # diffusers folder of THUDM/CogVideoX-2b
CLIP_B32_DIR = "clip-vit-base-patch32"  # openai/clip-vit-base-patch32 (CSCV metric)
_DIFFUSERS_WEIGHTS_SHARDED = (*_DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.safetensors.index.json")
_TRANSFORMERS_WEIGHTS_SHARDED = (*_TRANSFORMERS_WEIGHTS, "model.safetensors.index.json", "pytorch_model.bin.index.json")

_VIDEO_GENERATE_REQUIRED = [
    *[(f"{COGVIDEOX_DIR}/{m}/config.json",) for m in ("transformer", "vae", "text_encoder")],
    *[tuple(f"{COGVIDEOX_DIR}/{m}/{w}" for w in _DIFFUSERS_WEIGHTS_SHARDED) for m in ("transformer", "vae")],
    tuple(f"{COGVIDEOX_DIR}/text_encoder/{w}" for w in _TRANSFORMERS_WEIGHTS_SHARDED),
    (f"{COGVIDEOX_DIR}/tokenizer/tokenizer.json", f"{COGVIDEOX_DIR}/tokenizer/spiece.model"),
    (f"{COGVIDEOX_DIR}/scheduler/scheduler_config.json",),
]
_VIDEO_CSCV_REQUIRED = [
    (f"{CLIP_B32_DIR}/config.json",),
    tuple(f"{CLIP_B32_DIR}/{w}" for w in _TRANSFORMERS_WEIGHTS),
]


def _load_video_generate(profile: str, model_dir: Path | None, device, dtype, *, seed: int = 0, num_layers: int = 2):
    """DiTCtrlPipeline. tiny: 2-layer CogVideoX at 32x32 (kwargs seed, num_layers). pretrained:
    CogVideoX-2B (fp16 on CUDA, as its model card runs it), the official DPM sampler."""
    from models.video.ditctrl.pipeline import DiTCtrlPipeline

    if profile == "tiny":
        from models.video.ditctrl import tiny

        components = tiny.tiny_components(seed, num_layers=num_layers)
    else:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
        from transformers import T5EncoderModel, T5TokenizerFast

        root = model_dir / COGVIDEOX_DIR
        kw = dict(local_files_only=True)
        dkw = dict(kw, torch_dtype=dtype, low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        components = dict(
            transformer=CogVideoXTransformer3DModel.from_pretrained(root / "transformer", **dkw),
            vae=AutoencoderKLCogVideoX.from_pretrained(root / "vae", **dkw),
            text_encoder=T5EncoderModel.from_pretrained(root / "text_encoder", **kw),
            tokenizer=T5TokenizerFast.from_pretrained(root / "tokenizer", **kw),
            # the folder ships a DDIM config; the official sampler is DPM++ 2M SDE on the same schedule
            scheduler=CogVideoXDPMScheduler.from_pretrained(root / "scheduler", **kw),
        )
    for name in ("transformer", "vae", "text_encoder"):
        if components[name].dtype != dtype:
            components[name] = components[name].to(dtype)
    return DiTCtrlPipeline(**components).to(device)


def _load_video_cscv(profile: str, model_dir: Path | None, device, dtype, *, seed: int = 5):
    """CSCV scorer: CLIP ViT-B/32 vision tower (pretrained) or a tiny random CLIP ViT (tiny)."""
    from models.video.ditctrl.metrics import CSCVScorer

    if profile == "tiny":
        from models.video.ditctrl.tiny import tiny_clip_vision

        vision = tiny_clip_vision(seed)
    else:
        from transformers import CLIPVisionModel

        vision = CLIPVisionModel.from_pretrained(model_dir / CLIP_B32_DIR, local_files_only=True)
    return CSCVScorer(vision.to(device=device, dtype=dtype))


register(ModelSpec("video.generate", _load_video_generate, _VIDEO_GENERATE_REQUIRED))
register(ModelSpec("video.cscv", _load_video_cscv, _VIDEO_CSCV_REQUIRED))


def load_video_generation(profile: str, model_dir: str | Path | None = None, device: "str | torch.device" = "cpu",
                          dtype: "torch.dtype | None" = None, **kwargs):
    """The DiTCtrl pipeline (`models.video.ditctrl.pipeline.DiTCtrlPipeline`) for `profile`."""
    return load("video.generate", profile, model_dir, device, dtype, **kwargs)


def load_cscv(profile: str, model_dir: str | Path | None = None, device: "str | torch.device" = "cpu",
              dtype: "torch.dtype | None" = None, **kwargs):
    """The CSCV scorer (`models.video.ditctrl.metrics.CSCVScorer`) for `profile`."""
    return load("video.cscv", profile, model_dir, device, dtype, **kwargs)


# ---------------------------------------------------------------- anomaly (PatchCore backbones)

from models.anomaly import loader as _anomaly  # noqa: E402  (torch-free at import)

ANOMALY_DIR = _anomaly.ANOMALY_DIR


def _load_anomaly(profile: str, model_dir: Path | None, device, dtype):
    """`AnomalyBackbones`: the ResNet backbones PatchCore embeds with, built per architecture
    on first use. Default architecture: tiny (tiny profile) or wide_resnet50_2 (pretrained)."""
    backbones = _anomaly.AnomalyBackbones(profile, model_dir, device)
    backbones.get(backbones.default_arch)  # the default one now, so a missing file fails the load
    return backbones


register(ModelSpec("anomaly", _load_anomaly, _anomaly.required(_anomaly.DEFAULT_ARCH)))


def load_anomaly(profile: str, model_dir: str | Path | None = None, device: "str | torch.device" = "cpu", **kwargs):
    """The anomaly backbones (`models.anomaly.loader.AnomalyBackbones`) for `profile`."""
    return load("anomaly", profile, model_dir, device, **kwargs)


# ---------------------------------------------------------------- subject (BLIP-Diffusion, DreamBooth-LoRA, DreamBench)

from models.subject import weights_layout as _subject  # noqa: E402  (torch-free)


def _subject_loader(component: str):
    """The phase-1 builders (models/subject/loader.py) take the loader arguments as they are."""

    def loader(profile: str, model_dir: Path | None, device, dtype, *, seed: int = 0):
        from models.subject.loader import BUILDERS

        return BUILDERS[component](profile, model_dir, device, dtype, seed=seed)

    loader.__name__ = f"_load_subject_{component}"
    return loader


register(ModelSpec("subject.in_context", _subject_loader("in_context"), _subject.INCONTEXT_REQUIRED))
register(ModelSpec("subject.expert", _subject_loader("expert"), _subject.EXPERT_REQUIRED))
register(ModelSpec("subject.metrics", _subject_loader("metrics"), _subject.METRICS_REQUIRED))


def weights_fingerprint(models: Sequence[str], profile: str, model_dir: str | Path | None) -> str:
    """What the models of a kind are loaded from, as a short digest clients can compare: the
    tiny profile's is its model names (its weights come from fixed seeds); the pretrained one's
    covers each required file present (relative path, size, modification time)."""
    import hashlib

    digest = hashlib.sha256(f"{profile}\n".encode())
    root = default_model_dir(model_dir)
    for name in models:
        digest.update(f"{name}\n".encode())
        if profile == "tiny" or root is None or name not in REGISTRY:
            continue
        for alts in REGISTRY[name].required:
            for rel in alts:
                path = root / rel
                if path.is_file():
                    st = path.stat()
                    digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
                    break
    return f"{profile}:{digest.hexdigest()[:16]}"
