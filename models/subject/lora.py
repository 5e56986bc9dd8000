"""DreamBooth-LoRA's adapters (peft) and the tuned-subject artifact: a small delta on the base.

    weights  safetensors bytes of the LoRA parameters only, named "unet.<peft key>" and, when
             the text encoder was tuned too, "text_encoder.<peft key>" (peft's
             `get_peft_model_state_dict` keys: adapter name stripped, e.g.
             "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight")
    meta     JSON: format, base model id, each adapter's LoRA config (r, lora_alpha,
             target_modules, init), what was tuned on (identifier, class, prompts, steps, ...),
             parameter count and dtype

LoRA on the UNet's attention projections (to_q, to_k, to_v, to_out.0), rank 4, alpha = rank,
"gaussian" init (A ~ N(0, 1/r), B = 0: the tuned model starts exactly at the base), as
diffusers' `train_dreambooth_lora.py`; the text encoder's q/k/v/out projections only when
asked. LoRA parameters are kept in float32 (also on a float16 base, as the diffusers script
casts them for training), so the stored values are the ones that sample.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

ADAPTER = "subject"
LORA_FORMAT = "visionjobs.dreambooth_lora.v1"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
PARTS = ("unet", "text_encoder")


class ArtifactMismatch(ValueError):
    """The artifact does not fit this model (other base model, other LoRA names or shapes)."""


@dataclass(frozen=True)
class LoraSpec:
    r: int = 4
    lora_alpha: float = 4.0
    target_modules: tuple = UNET_TARGETS
    init_lora_weights: str = "gaussian"

    def config(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, target_modules=list(self.target_modules),
                          init_lora_weights=self.init_lora_weights)

    def to_dict(self) -> dict:
        return {**asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraSpec":
        return cls(r=int(d["r"]), lora_alpha=float(d["lora_alpha"]), target_modules=tuple(d["target_modules"]),
                   init_lora_weights=d.get("init_lora_weights", "gaussian"))


def _tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_lora(model: nn.Module) -> bool:
    return ADAPTER in (getattr(model, "peft_config", None) or {})


def remove_lora(model: nn.Module) -> None:
    """Drop the subject adapter (the model computes as its base again). peft itself, not the
    diffusers / transformers mixins: transformers 5 wants a newer peft for its `add_adapter`."""
    if not has_lora(model):
        return
    for layer in _tuner_layers(model):
        layer.delete_adapter(ADAPTER)
    model.peft_config.pop(ADAPTER, None)
    if not model.peft_config:
        del model.peft_config  # else peft warns about "multiple adapters" at the next injection


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in _tuner_layers(model):
        layer.enable_adapters(enabled)


def add_lora(model: nn.Module, spec: LoraSpec, seed: int) -> dict[str, nn.Parameter]:
    """A fresh subject adapter (replacing any earlier one), its A matrices drawn from `seed`,
    its parameters float32. Returns them by name."""
    remove_lora(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(spec.config(), model, adapter_name=ADAPTER)
    params = lora_parameters(model)
    for p in params.values():
        p.data = p.data.float()
        p.requires_grad_(False)  # tuning switches them on for its own loop
    return params


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The subject adapter's parameters, by module name."""
    tag = f".{ADAPTER}."
    return {n: p for n, p in model.named_parameters() if "lora_" in n and tag in n}


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """peft's state dict of the subject adapter (keys without the adapter name)."""
    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


# ------------------------------------------------------------------ the artifact


@dataclass
class LoraArtifact:
    weights: bytes  # safetensors
    meta: dict = field(default_factory=dict)

    @property
    def base_model(self) -> str:
        return self.meta["base_model"]

    def spec(self, part: str) -> LoraSpec | None:
        d = self.meta.get("lora", {}).get(part)
        return LoraSpec.from_dict(d) if d else None

    def meta_json(self) -> str:
        return json.dumps(self.meta, sort_keys=True)

    def tensors(self) -> dict[str, torch.Tensor]:
        return st_load(self.weights)

    @classmethod
    def from_parts(cls, weights: bytes, meta: str | bytes | dict) -> "LoraArtifact":
        """Rebuild from the two stored objects (safetensors bytes + JSON text or dict)."""
        meta = json.loads(meta) if isinstance(meta, (str, bytes, bytearray)) else dict(meta)
        if meta.get("format") != LORA_FORMAT:
            raise ArtifactMismatch(f"not a DreamBooth-LoRA artifact of format {LORA_FORMAT!r}: {meta.get('format')!r}")
        if not isinstance(meta.get("base_model"), str):
            raise ArtifactMismatch("artifact meta has no base_model")
        if not isinstance(meta.get("lora"), dict) or not meta["lora"].get("unet"):
            raise ArtifactMismatch("artifact meta has no UNet LoRA config")
        return cls(bytes(weights), meta)


def export_lora(models: dict[str, nn.Module], base_model: str, **extra) -> LoraArtifact:
    """The subject adapters of `models` ({"unet": ..., "text_encoder": ...}; parts without an
    adapter are left out) as one artifact. `extra` (JSON) goes into meta as is."""
    tensors, specs = {}, {}
    for part, model in models.items():
        if not has_lora(model):
            continue
        cfg = model.peft_config[ADAPTER]
        specs[part] = LoraSpec(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=tuple(sorted(cfg.target_modules)),
                               init_lora_weights=str(cfg.init_lora_weights)).to_dict()
        tensors.update({f"{part}.{k}": v.detach().to("cpu").contiguous() for k, v in lora_state(model).items()})
    if "unet" not in specs:
        raise ValueError("the UNet carries no subject LoRA: tune first")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    meta = dict(extra, format=LORA_FORMAT, base_model=base_model, lora=specs,
                num_parameters=int(sum(t.numel() for t in tensors.values())),
                dtype=dtypes[0] if len(dtypes) == 1 else dtypes)
    json.dumps(meta)  # fail here, not at storage time, if something is not JSON
    # one metadata key: safetensors writes its metadata map in hash order, and the same tuning
    # should give the same bytes (the base model id is in meta)
    return LoraArtifact(st_save(tensors, metadata={"format": LORA_FORMAT}), meta)


def apply_lora(models: dict[str, nn.Module], artifact: LoraArtifact, base_model: str | None = None) -> None:
    """Put the artifact's adapters onto `models` (each part's adapter replaced, or removed
    when the artifact has none for it). Checks the base model id, every name and shape."""
    if base_model is not None and artifact.base_model != base_model:
        raise ArtifactMismatch(f"artifact was tuned on {artifact.base_model!r}, this model is {base_model!r}")
    tensors = artifact.tensors()
    unknown = sorted({k.split(".", 1)[0] for k in tensors} - set(PARTS))
    if unknown:
        raise ArtifactMismatch(f"artifact holds parameters of unknown parts {unknown}")
    for part, model in models.items():
        spec = artifact.spec(part)
        if spec is None:
            remove_lora(model)
            continue
        add_lora(model, spec, seed=0)
        expected = lora_state(model)
        got = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(part + ".")}
        missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        if missing or unexpected:
            remove_lora(model)
            raise ArtifactMismatch(f"{part} LoRA does not fit: {len(missing)} missing (e.g. {missing[:2]}), "
                                   f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
        wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(got[k].shape)]
        if wrong:
            remove_lora(model)
            k = wrong[0]
            raise ArtifactMismatch(f"{part} LoRA: {len(wrong)} shape mismatches, e.g. {k}: "
                                   f"{tuple(got[k].shape)} vs {tuple(expected[k].shape)}")
        device = next(iter(lora_parameters(model).values())).device
        set_peft_model_state_dict(model, {k: v.to(device=device, dtype=torch.float32) for k, v in got.items()},
                                  adapter_name=ADAPTER)
