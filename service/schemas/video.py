"""POST /v1/video-generations (DiTCtrl multi-prompt long video on CogVideoX)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from service.schemas.common import (
    JobRequest, MAX_PROMPT, MAX_SEED, MAX_STEPS, REQUEST, INPUT_REF, INPUT_HELP, Prompt, RequiredPrompt,
)

SEGMENT_LATENT_FRAMES = 13  # 49 pixel frames: the CogVideoX clip; the VAE compresses time 4x


def video_frame_count(prompts: int, overlap: int, transition_segments: int, segments: int | None) -> tuple[int, int, int]:
    """(segments S, latent frames L, pixel frames): S = N + (N - 1) T, L = 13 + (S - 1)(13 - overlap),
    frames 4 (L' - 1) + 1 with L' = L rounded down to odd (the CogVideoX VAE decodes 1 + 2k latent
    frames). Mirrors models/video/ditctrl/layout.py without torch; a test keeps them equal."""
    s = segments if segments is not None else prompts + (prompts - 1) * transition_segments
    latent = SEGMENT_LATENT_FRAMES + (s - 1) * (SEGMENT_LATENT_FRAMES - overlap)
    decoded = latent if latent % 2 else latent - 1
    return s, latent, 4 * (decoded - 1) + 1


class KvSharing(BaseModel):
    model_config = REQUEST

    enabled: bool = True
    steps: tuple[int, int] = Field((2, 25), description="Step window [a, b) of 50 steps; scaled to other step counts.")
    layers: tuple[int, int] = Field((25, 30), description="Layer window [a, b) of 30 layers; scaled to other depths.")
    subject_tokens: list[int | str] | None = Field(
        None, max_length=16, description="Opt-in mask-guided KV sharing: token indices or words of the subject.")

    @model_validator(mode="after")
    def _windows(self):
        for name, (a, b), top in (("steps", self.steps, 50), ("layers", self.layers, 30)):
            if not 0 <= a < b <= top:
                raise ValueError(f"{name}: must be a window [a, b) with 0 <= a < b <= {top}")
        return self


DEFAULT_WIDTH, DEFAULT_HEIGHT = 720, 480  # CogVideoX-2B's training size: what an absent width or height becomes


class VideoGenerationRequest(JobRequest):
    model_config = REQUEST

    prompts: list[RequiredPrompt] = Field(min_length=1, max_length=8, description="One prompt per part of the video, in order.")
    segments: int | None = Field(None, ge=1, le=16,
                                 description="Single prompt only: how many 49-frame segments to chain.")
    overlap: int = Field(6, ge=0, le=12, description="Latent frames shared by adjacent segments (paper 6, repo 9).")
    transition_segments: int = Field(1, ge=0, le=4, description="Segments blending each prompt into the next.")
    kv_sharing: KvSharing = Field(default_factory=KvSharing)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(6.0, ge=0, le=30, description=(
        "Dynamic CFG scale s (per step 1 + s (1 - cos(pi ((T - t) / T)^5)) / 2). At s <= 1 CFG is off: one "
        "conditional pass per step (diffusers' CogVideoX convention; the official guider would still apply the "
        "dynamic scales 1..1 + s)."))
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    width: int | None = Field(None, ge=16, le=1360, multiple_of=16, description=f"Default: the model's ({DEFAULT_WIDTH}).")
    height: int | None = Field(None, ge=16, le=1360, multiple_of=16, description=f"Default: the model's ({DEFAULT_HEIGHT}).")
    fps: int = Field(16, ge=1, le=60)
    metrics: list[Literal["cscv"]] = Field([], fail_fast=True, description="cscv: transition smoothness (CLIP frame similarity).")

    @model_validator(mode="after")
    def _prompts(self):
        for i, p in enumerate(self.prompts):
            if not p.strip() or len(p) > MAX_PROMPT:
                raise ValueError(f"prompts[{i}]: must have 1..{MAX_PROMPT} characters")
        if self.segments is not None and len(self.prompts) != 1:
            raise ValueError("segments: applies to a single prompt; with several prompts the layout follows from them")
        return self


class VideoOutput(BaseModel):
    url: str
    expires_at: datetime
    frames: int
    fps: int
    width: int
    height: int
    content_type: str


class VideoGenerationResult(BaseModel):
    video: VideoOutput
    thumbnail_url: str
    thumbnail_expires_at: datetime
    segments: int
    latent_frames: int
    seed: int
    metrics: dict[str, float] = {}


TUNED_MODEL_ID = r"^tvm_[0-9a-f]{24}$"


class VideoEditRequest(JobRequest):
    """Tune-A-Video: tune on `video` (described by `source_prompt`), then one edit per prompt;
    or reuse an earlier tuning with `tuned_model` (tuning and the clip settings are skipped)."""

    model_config = REQUEST
    INPUTS: ClassVar[tuple[str, ...]] = ("video",)  # upload ids, URLs or data: URIs

    video: str | None = Field(None, pattern=INPUT_REF, description="Upload id of the clip (MP4, WebM, MOV or GIF)."
                                                                     + INPUT_HELP)
    tuned_model: str | None = Field(None, pattern=TUNED_MODEL_ID, description="A tuned model id from an earlier edit.")
    source_prompt: Prompt | None = Field(None, max_length=MAX_PROMPT, description="What the clip shows (with `video`).")
    edits: list[RequiredPrompt] = Field(min_length=1, max_length=8, description="One edited video per prompt.")
    tune_steps: int = Field(500, ge=1, le=2000, description="One-shot tuning steps.")
    frames: int | None = Field(None, ge=1, le=48, description="Frames taken from the clip for tuning (default 24).")
    frame_stride: Annotated[int, Field(ge=1, le=30)] | Literal["spread"] = Field(
        2, description="Take every n-th frame from start_frame, as the official (sample_frame_rate 2: 24 frames span "
                       "47); 'spread': frames spread over the whole clip. A clip too short for it is refused.")
    start_frame: int = Field(0, ge=0, le=10_000, description="The first frame taken (official sample_start_idx 0).")
    width: int | None = Field(None, ge=64, le=1024, multiple_of=8, description="Default 512.")
    height: int | None = Field(None, ge=64, le=1024, multiple_of=8, description="Default 512.")
    steps: int = Field(50, ge=1, le=MAX_STEPS, description="DDIM inversion and sampling steps.")
    guidance_scale: float = Field(12.5, ge=0, le=30)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    fps: int = Field(8, ge=1, le=60)
    gif: bool = Field(False, description="Also write a GIF of each edit.")

    @model_validator(mode="after")
    def _source(self):
        if (self.video is None) == (self.tuned_model is None):
            raise ValueError("video: give exactly one of `video` (tune on it) or `tuned_model` (reuse a tuning)")
        if self.video is not None and not (self.source_prompt or "").strip():
            raise ValueError("source_prompt: describe the clip when tuning on `video`")
        fixed = {"tune_steps", "frames", "frame_stride", "start_frame", "width", "height", "source_prompt"} & self.model_fields_set
        if self.tuned_model is not None and fixed:
            raise ValueError(f"{', '.join(sorted(fixed))}: fixed by the tuned model; leave out")
        for i, p in enumerate(self.edits):
            if not p.strip() or len(p) > MAX_PROMPT:
                raise ValueError(f"edits[{i}]: must have 1..{MAX_PROMPT} characters")
        return self


class EditedVideo(BaseModel):
    prompt: str
    url: str
    expires_at: datetime
    frames: int
    fps: int
    width: int
    height: int
    content_type: str
    gif_url: str | None = None
    gif_expires_at: datetime | None = None


class VideoEditResult(BaseModel):
    tuned_model_id: str
    tuning: Literal["ran", "skipped"]
    tune_seconds: float
    videos: list[EditedVideo]
    seed: int


class TunedVideoModel(BaseModel):
    """A Tune-A-Video tuning (`tvm_...`) kept by a video edit: reused with `tuned_model`."""

    id: str
    base_model: str = Field(description="The base model tuned (the model profile's Tune-A-Video base).")
    source_prompt: str = Field(description="What the tuned clip shows.")
    clip: dict[str, Any] = Field(description="How the clip was sampled: frames, width, height, indices, frame_stride, "
                                             "start_frame, source_frames, source_size, source_fps.")
    tune_steps: int
    size_bytes: int | None = Field(None, description="Bytes of the stored artifacts (trained parameters, metadata, "
                                                     "the clip's latents); null on tunings recorded without it.")
    job_id: str = Field(description="The video edit job that tuned it.")
    created_at: datetime


class TunedVideoModelPage(BaseModel):
    items: list[TunedVideoModel]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")
