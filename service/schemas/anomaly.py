"""Anomaly models (PatchCore fit) and anomaly scoring."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from service.schemas.common import JobRequest, MAX_SEED, REQUEST, UPLOAD_ID, Text

MODEL_ID = r"^anm_[0-9a-f]{24}$"
MAX_TRAIN_IMAGES, MAX_SCORE_IMAGES, MAX_VALIDATION_IMAGES = 1000, 64, 200
Backbone = Literal["wide_resnet50_2", "resnet18", "tiny"]


class ValidationSet(BaseModel):
    model_config = REQUEST

    normal: list[str] = Field([], max_length=MAX_VALIDATION_IMAGES)
    abnormal: list[str] = Field([], max_length=MAX_VALIDATION_IMAGES)


class AnomalyFitRequest(JobRequest):
    """Fit PatchCore on normal images (upload ids, or one ZIP upload of images)."""

    model_config = REQUEST

    name: Text = Field(min_length=1, max_length=200)
    images: list[str] = Field([], max_length=MAX_TRAIN_IMAGES, description="Upload ids of normal images.")
    archive: str | None = Field(None, pattern=UPLOAD_ID, description="Upload id of a ZIP of normal images.")
    validation: ValidationSet | None = Field(
        None, description="With abnormal images: F1-optimal thresholds; normal only: a 0.99 quantile.")
    backbone: Backbone | None = Field(None, description="Default: wide_resnet50_2 (pretrained), tiny (tiny profile).")
    coreset_ratio: float = Field(0.1, gt=0, le=1)
    image_size: int = Field(256, ge=64, le=1024, multiple_of=32)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _source(self):
        if bool(self.images) == bool(self.archive):
            raise ValueError("give normal images either as `images` (upload ids) or as one `archive` (ZIP upload)")
        return self


class AnomalyScoreRequest(JobRequest):
    model_config = REQUEST

    model_id: str = Field(pattern=MODEL_ID)
    images: list[str] = Field(min_length=1, max_length=MAX_SCORE_IMAGES, description="Upload ids to score.")


class ThresholdsPatch(BaseModel):
    model_config = REQUEST

    image_threshold: float | None = Field(None, description="Raw image-score threshold (normalised to 0.5).")
    pixel_threshold: float | None = Field(None, description="Raw anomaly-map threshold for masks and boxes.")


class AnomalyModel(BaseModel):
    id: str
    name: str
    backbone: str
    image_size: int
    coreset_ratio: float
    thresholds: dict[str, float | str | None]
    counts: dict[str, int]
    job_id: str
    created_at: datetime
    updated_at: datetime


class AnomalyModelList(BaseModel):
    items: list[AnomalyModel]


class BoxOut(BaseModel):
    x: int
    y: int
    w: int
    h: int
    area: int
    score: float


class ScoredImage(BaseModel):
    image: str
    score: float
    normalized_score: float
    label: bool
    boxes: list[BoxOut]
    heat_map_url: str
    mask_url: str
    anomaly_map_url: str


class AnomalyScoreResult(BaseModel):
    model_id: str
    items: list[ScoredImage]


class AnomalyFitResult(BaseModel):
    model_id: str
    thresholds: dict[str, float | str | None]
    counts: dict[str, int]
