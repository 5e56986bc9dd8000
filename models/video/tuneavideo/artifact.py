"""The tuned-model artifact: what one-shot tuning changed, and nothing else.

    weights  safetensors bytes of the trained parameters only (every attn1.to_q, attn2.to_q
             and temporal attention `attn_temp`), named as in the inflated UNet
    meta     JSON: format, base model id, the clip's settings (frames, size, prompt, ...),
             the trainable-module rule, parameter count and dtype

The official code saves the whole tuned pipeline (~4 GB for SD 1.x); the frozen weights are
the base model's, so the artifact keeps only the trained ones and names the base model to
load them onto. Loading checks the base model id, every name and every shape. Parameters are
stored in the dtype the model runs in (float16 on CUDA: after mixed-precision tuning the
float32 master copies are cast back, so the stored values are exactly the ones that sample).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from models.video.tuneavideo.inflate import TRAINABLE_MODULES, trainable_parameters

ARTIFACT_FORMAT = "visionjobs.tuneavideo.v1"


class ArtifactMismatch(ValueError):
    """The artifact does not fit this model (other base model, names or shapes)."""


@dataclass
class TunedArtifact:
    weights: bytes  # safetensors
    meta: dict = field(default_factory=dict)  # JSON-serialisable

    @property
    def base_model(self) -> str:
        return self.meta["base_model"]

    @property
    def clip(self) -> dict:
        return self.meta.get("clip", {})

    def meta_json(self) -> str:
        return json.dumps(self.meta, sort_keys=True)

    @classmethod
    def from_parts(cls, weights: bytes, meta: str | bytes | dict) -> "TunedArtifact":
        """Rebuild from the two stored objects (safetensors bytes + JSON text or dict)."""
        meta = json.loads(meta) if isinstance(meta, (str, bytes, bytearray)) else dict(meta)
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ArtifactMismatch(f"not a Tune-A-Video artifact of format {ARTIFACT_FORMAT!r}: {meta.get('format')!r}")
        if not isinstance(meta.get("base_model"), str):
            raise ArtifactMismatch("artifact meta has no base_model")
        return cls(bytes(weights), meta)

    def tensors(self) -> dict[str, torch.Tensor]:
        return st_load(self.weights)


def export_tuned(unet: nn.Module, base_model: str, clip: dict | None = None, **extra) -> TunedArtifact:
    """The trained parameters of an inflated `unet`, as stored now (dtype included), plus
    meta. `clip` is whatever describes the clip that was tuned on (frames, width, height,
    prompt, source upload id ...); `extra` goes into meta as is. Both must be JSON."""
    params = trainable_parameters(unet)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in params.items()}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    meta = dict(
        extra,
        format=ARTIFACT_FORMAT,
        base_model=base_model,
        clip=dict(clip or {}),
        trainable_modules=list(TRAINABLE_MODULES),
        num_parameters=int(sum(t.numel() for t in tensors.values())),
        dtype=dtypes[0] if len(dtypes) == 1 else dtypes,
    )
    json.dumps(meta)  # fail here, not at storage time, if something is not JSON
    weights = st_save(tensors, metadata={"format": ARTIFACT_FORMAT, "base_model": base_model})
    return TunedArtifact(weights, meta)


@torch.no_grad()
def apply_tuned(unet: nn.Module, artifact: TunedArtifact, base_model: str | None = None) -> None:
    """Copy the artifact's parameters into an inflated `unet` (cast to each parameter's
    dtype). With `base_model`, the artifact must have been tuned on that base."""
    if base_model is not None and artifact.base_model != base_model:
        raise ArtifactMismatch(f"artifact was tuned on {artifact.base_model!r}, this model is {base_model!r}")
    params = trainable_parameters(unet)
    tensors = artifact.tensors()
    missing = sorted(params.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise ArtifactMismatch(
            f"artifact does not fit this UNet: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    wrong = [n for n, p in params.items() if tuple(tensors[n].shape) != tuple(p.shape)]
    if wrong:
        n = wrong[0]
        raise ArtifactMismatch(f"{len(wrong)} shape mismatches, e.g. {n}: {tuple(tensors[n].shape)} vs {tuple(params[n].shape)}")
    for name, p in params.items():
        p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))


def tensor_to_bytes(tensor: torch.Tensor, **metadata: str) -> bytes:
    """One tensor (e.g. an inverted latent a worker caches next to the artifact) as safetensors."""
    return st_save({"tensor": tensor.detach().to("cpu").contiguous()}, metadata=metadata or None)


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    return st_load(data)["tensor"]
