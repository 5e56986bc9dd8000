"""Guidance arithmetic shared by the SD-family pipelines (colorization, video).

Kept free of any model code so every pipeline combines noise predictions the same way and
tests can check the formulas against a hand computation.
"""

from __future__ import annotations

import math

import torch


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): eps_u + s * (eps_c - eps_u).

    s = 1 gives eps_c, s = 0 gives eps_u; s > 1 extrapolates away from the unconditional
    prediction."""
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond {tuple(eps_uncond.shape)} and eps_cond {tuple(eps_cond.shape)} differ in shape")
    return eps_uncond + scale * (eps_cond - eps_uncond)


def split_cfg_batch(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a [uncond, cond] batch (one forward for both halves) into its two halves."""
    if eps.shape[0] % 2:
        raise ValueError(f"a CFG batch has an even batch size, got {eps.shape[0]}")
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond, eps_cond


def dynamic_cfg_scale(scale: float, timestep: float, num_inference_steps: int, exponent: float = 5.0) -> float:
    """CogVideoX's dynamic CFG: 1 + s * (1 - cos(pi * ((n - t) / n) ** 5)) / 2.

    The released formula, as the official SAT `DynamicCFG` guider and diffusers'
    `CogVideoXPipeline(use_dynamic_cfg=True)` evaluate it: `t` is the *training timestep*
    (e.g. 999..0), not the step index, which both implementations feed in. Kept as released
    so results match theirs."""
    base = (num_inference_steps - float(timestep)) / num_inference_steps
    return 1.0 + scale * (1.0 - math.cos(math.pi * base**exponent)) / 2.0


# ---------------------------------------------------------------- autoguidance and the mode switch

GUIDANCE_MODES = ("cfg", "autoguidance", "none")
# Scale used when a request names a mode but no scale: the Control Color demo's CFG 7.0; for
# autoguidance 2.0 (Karras et al. 2024 report their best FIDs at w ~ 2-3 for EDM2; no value
# was published for SD-family models); `none` ignores it.
DEFAULT_GUIDANCE_SCALES = {"cfg": 7.0, "autoguidance": 2.0, "none": 1.0}


def autoguidance(eps_guide: torch.Tensor, eps_main: torch.Tensor, scale: float) -> torch.Tensor:
    """Autoguidance (Karras et al., 2024): eps_guide(c) + w * (eps_main(c) - eps_guide(c)).

    Both predictions are *conditional* (same prompt, same hints); the guide is a weaker model
    of the same family. w = 1 gives eps_main; w > 1 extrapolates away from the guide."""
    if eps_guide.shape != eps_main.shape:
        raise ValueError(f"eps_guide {tuple(eps_guide.shape)} and eps_main {tuple(eps_main.shape)} differ in shape")
    return eps_guide + scale * (eps_main - eps_guide)


class GuidanceConfig:
    """`{mode: "cfg" | "autoguidance" | "none", scale}` as one validated value.

    cfg           eps_u + s (eps_c - eps_u)            (s = 1: one conditional pass)
    autoguidance  eps_guide(c) + s (eps_main(c) - eps_guide(c))   (s = 1: main pass only)
    none          eps_c (scale ignored)

    `needs_second_pass` says whether a second prediction (uncond or guide) has to be computed:
    at scale 1 both formulas reduce to the main conditional prediction exactly, so pipelines
    skip the extra pass there (as the official Control Color sampler does for CFG)."""

    __slots__ = ("mode", "scale")

    def __init__(self, mode: str = "cfg", scale: float | None = None):
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"`guidance.mode` has to be one of {', '.join(GUIDANCE_MODES)}, got {mode!r}")
        if scale is None:
            scale = DEFAULT_GUIDANCE_SCALES[mode]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"`guidance.scale` has to be a finite number >= 0, got {scale!r}")
        self.mode, self.scale = mode, float(scale)

    @classmethod
    def parse(cls, value: "GuidanceConfig | dict | float | int | None") -> "GuidanceConfig":
        """None -> CFG 7.0; a number -> CFG at that scale; a dict {mode, scale} (scale
        optional: the mode's default); a GuidanceConfig as is."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"mode", "scale"}
            if unknown:
                raise ValueError(f"`guidance` accepts the keys mode and scale, got unknown {', '.join(sorted(unknown))}")
            return cls(value.get("mode", "cfg"), value.get("scale"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls("cfg", value)
        raise ValueError(f"`guidance` has to be a dict {{mode, scale}}, a GuidanceConfig, a number (CFG scale) "
                         f"or None, got {type(value).__name__}")

    @property
    def needs_second_pass(self) -> bool:
        return self.mode != "none" and self.scale != 1.0

    def combine(self, eps_main: torch.Tensor, eps_other: torch.Tensor | None) -> torch.Tensor:
        """The guided prediction from the main conditional one and, when `needs_second_pass`,
        the other one (the unconditional prediction for cfg, the guide's for autoguidance)."""
        if not self.needs_second_pass:
            return eps_main
        if eps_other is None:
            raise ValueError(f"guidance {self} needs the second prediction")
        if self.mode == "cfg":
            return cfg(eps_other, eps_main, self.scale)
        return autoguidance(eps_other, eps_main, self.scale)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "scale": self.scale}

    def __eq__(self, other) -> bool:
        return isinstance(other, GuidanceConfig) and (self.mode, self.scale) == (other.mode, other.scale)

    def __repr__(self) -> str:
        return f"GuidanceConfig(mode={self.mode!r}, scale={self.scale:g})"
