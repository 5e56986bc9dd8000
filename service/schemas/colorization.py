"""POST /v1/colorizations."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.schemas.common import (
    JobRequest,
    ImageOutput, MAX_OUTPUTS, MAX_PROMPT, MAX_SEED, Prompt, MAX_STEPS, MAX_STROKE_POINTS, MAX_STROKE_WIDTH, MAX_STROKES, REQUEST, UPLOAD_ID,
)


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
    scale: float = Field(7.0, ge=0, le=30)


class ColorizationRequest(JobRequest):
    model_config = REQUEST

    image: str = Field(pattern=UPLOAD_ID, description="Upload id of the photo (grayscale or colour).")
    prompt: Prompt = Field("", max_length=MAX_PROMPT, description="Optional text describing the colours.")
    negative_prompt: Prompt | None = Field(None, max_length=MAX_PROMPT,
                                        description="Default: the Control Color demo's negative prompt.")
    strokes: list[Stroke] = Field([], max_length=MAX_STROKES, fail_fast=True, description="Vector colour strokes (hints).")
    stroke_image: str | None = Field(None, pattern=UPLOAD_ID,
                                     description="Upload id of an RGBA stroke image of the input's size; alpha > 0 marks strokes.")
    exemplar: str | None = Field(None, pattern=UPLOAD_ID, description="Upload id of a colour exemplar image.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed; chosen and returned when absent.")
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="DDIM steps.")
    guidance: Guidance = Field(default_factory=Guidance)
    sag_scale: float = Field(0.05, ge=0, le=2, description="Streamlined self-attention guidance scale (0 = off).")
    sag_threshold: int = Field(600, ge=0, le=1000, description="SAG runs at steps whose timestep exceeds this.")
    deformable_decoder: bool = Field(False, description="Content-guided deformable VAE decoder.")
    num_outputs: int = Field(1, ge=1, le=MAX_OUTPUTS, description="Images generated in one batch.")
    output_format: Literal["png", "jpeg", "webp"] = "png"


class ColorizationResult(BaseModel):
    images: list[ImageOutput]
    seed: int
