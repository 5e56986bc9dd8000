"""POST /v1/colorizations."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from service.schemas.common import (
    JobRequest,
    ImageOutput, MAX_OUTPUTS, MAX_PROMPT, MAX_SEED, Prompt, MAX_STEPS, MAX_STROKE_POINTS, MAX_STROKE_WIDTH, MAX_STROKES, REQUEST, INPUT_REF, INPUT_HELP,
    field_error,
)

# The scale a mode gets when none is given: models.guidance.DEFAULT_GUIDANCE_SCALES (a test keeps
# them equal; this module may not import torch): the Control Color demo's CFG 7.0; autoguidance
# 2.0 (Karras et al. report w ~ 1.7-2.5); `none` ignores it.
DEFAULT_GUIDANCE_SCALES = {"cfg": 7.0, "autoguidance": 2.0, "none": 1.0}


class Stroke(BaseModel):
    model_config = REQUEST

    color: str = Field(pattern=r"^#[0-9A-Fa-f]{6}$", description="`#RRGGBB`.")
    width: float = Field(8.0, gt=0, le=MAX_STROKE_WIDTH, description="Brush diameter in input-image pixels.")
    # fail_fast: validation stops at the first bad item, so a megabyte of bad points costs one error
    points: list[tuple[float, float]] = Field(min_length=1, max_length=MAX_STROKE_POINTS, fail_fast=True,
                                              description="`[[x, y], ...]` in input-image pixel coordinates.")


class Guidance(BaseModel):
    model_config = REQUEST

    mode: Literal["cfg", "autoguidance", "none"] = Field(
        "cfg", description="cfg: eps_u + s (eps_c - eps_u); autoguidance: a weaker model of the same family guides "
                           "(eps_g + s (eps_main - eps_g)); none: the conditional prediction alone.")
    scale: float | None = Field(None, ge=0, le=30, description="Default per mode: cfg 7, autoguidance 2 (none "
                                                                 "ignores it). The job's params show the scale used.")

    @model_validator(mode="after")
    def _mode_default(self):
        if self.scale is None:
            self.scale = DEFAULT_GUIDANCE_SCALES[self.mode]
        return self


class ColorizationParity(BaseModel):
    """Switches back to the official Control Color code where the project deviates (each changes
    only what it names; see the README's fidelity section)."""

    model_config = REQUEST

    sag_heads: Literal["all", "official"] = Field(
        "all", description="SAG mask from all attention heads of each item (all), or heads 0-3 of the "
                           "unconditional pass as the official code (official).")
    working_size: Literal["aspect", "official"] = Field(
        "aspect", description="Aspect kept, long side capped (aspect), or the official rule: a side of 800 px or "
                              "more after scaling becomes 768 on its own (official).")
    timesteps: Literal["leading", "uniform"] = Field(
        "leading", description="diffusers' DDIM spacing (leading), or ldm's uniform spacing (uniform): the same "
                               "when steps divide 1000; otherwise uniform runs one more step (30 -> 31).")
    gray_input: Literal["lab", "official"] = Field(
        "lab", description="Every input's L is its Lab L (lab), or a gray input's gray values stand in for L as in "
                           "the official demo (official).")
    l_merge: Literal["gamut_fit", "official"] = Field(
        "gamut_fit", description="Out-of-gamut colours lose chroma so the output keeps the input's L (gamut_fit), "
                                 "or the official plain OpenCV Lab -> RGB merge, which clips and shifts L (official).")


PARITY_PRESETS = {"project": ColorizationParity(),
                  "official": ColorizationParity(sag_heads="official", working_size="official", timesteps="uniform",
                                                 gray_input="official", l_merge="official")}


class ColorizationRequest(JobRequest):
    model_config = REQUEST

    INPUTS: ClassVar[tuple[str, ...]] = ("image", "stroke_image", "exemplar")

    image: str = Field(pattern=INPUT_REF, description="Upload id of the photo (grayscale or colour)." + INPUT_HELP)
    prompt: Prompt = Field("", max_length=MAX_PROMPT, description="Optional text describing the colours.")
    negative_prompt: Prompt | None = Field(None, max_length=MAX_PROMPT,
                                        description="Default: the Control Color demo's negative prompt.")
    strokes: list[Stroke] = Field([], max_length=MAX_STROKES, fail_fast=True, description="Vector colour strokes (hints).")
    stroke_image: str | None = Field(None, pattern=INPUT_REF,
                                     description="Upload id of an RGBA stroke image of the input's size; alpha > 0 marks strokes.")
    exemplar: str | None = Field(None, pattern=INPUT_REF, description="Upload id of a colour exemplar image." + INPUT_HELP)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed; chosen and returned when absent.")
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="DDIM steps.")
    guidance: Guidance = Field(default_factory=Guidance)
    sag_scale: float = Field(0.05, ge=0, le=2, description="Streamlined self-attention guidance scale (0 = off).")
    sag_threshold: int = Field(600, ge=0, le=1000, description="SAG runs at steps whose timestep exceeds this.")
    deformable_decoder: bool = Field(False, description="Content-guided deformable VAE decoder.")
    auto_caption: bool = Field(True, description="An empty prompt is replaced by a BLIP caption of the input, as "
                                                 "the official demo; false: no caption.")
    parity: Literal["project", "official"] | ColorizationParity = Field(
        "project", validate_default=True,
        description="project: the documented defaults; official: every switch to the official code; or the "
                    "switches one by one. The job's params show the switches used.")
    num_outputs: int = Field(1, ge=1, le=MAX_OUTPUTS, description="Images generated in one batch.")
    output_format: Literal["png", "jpeg", "webp"] = "png"

    @field_validator("parity", mode="after")
    @classmethod
    def _expand_parity(cls, value):
        return PARITY_PRESETS[value].model_copy() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _negative_prompt_needs_cfg(self):
        if self.negative_prompt is not None and self.guidance.mode != "cfg":
            raise field_error("negative_prompt", f"has no effect with guidance.mode {self.guidance.mode!r} (no "
                                                 "unconditional pass runs); leave it out or use mode 'cfg'",
                              self.negative_prompt, self)
        return self


class ColorizationResult(BaseModel):
    images: list[ImageOutput]
    seed: int
    caption: str | None = Field(None, description="The BLIP caption used as the prompt (empty prompt, auto_caption).")
    prompt: str | None = Field(None, description="The text the model was conditioned on (added prompt included).")
    denoising_steps: int | None = Field(None, description="DDIM steps run (parity timesteps uniform: 31 for 30).")
    precision: str | None = Field(None, description="The denoiser's dtype on the worker, e.g. float16.")
