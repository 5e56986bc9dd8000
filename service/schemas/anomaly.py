"""Anomaly models (PatchCore fit) and anomaly scoring."""
from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from service.schemas.common import JobRequest, MAX_SEED, REQUEST, INPUT_REF, INPUT_HELP, Text

MODEL_ID = r"^anm_[0-9a-f]{24}$"
MAX_TRAIN_IMAGES, MAX_SCORE_IMAGES, MAX_VALIDATION_IMAGES = 1000, 64, 200
MAX_ABNORMAL_IMAGES = 500  # abnormal images of a dataset (ids, or abnormal/ in an archive)
Backbone = Literal["wide_resnet50_2", "resnet18", "tiny"]
AnomalyModelKind = Literal["patchcore", "reverse_distillation"]

# Reverse Distillation training: the limits of the request's fields and their defaults (the
# paper's Adam lr 0.005, batch 16; anomalib's 200 epochs and early-stopping patience 3). The
# training work, max_epochs x normal images, is capped by VISIONJOBS_MAX_TRAIN_IMAGE_EPOCHS.
MAX_EPOCHS, MAX_PATIENCE, MAX_BATCH_SIZE, MAX_LEARNING_RATE = 1000, 100, 64, 0.1
TRAINING_DEFAULTS = {"max_epochs": 200, "patience": 3, "batch_size": 16, "learning_rate": 0.005}
PATCHCORE_DEFAULTS = {"coreset_ratio": 0.1}


class ValidationSet(BaseModel):
    model_config = REQUEST

    normal: list[str] = Field([], max_length=MAX_VALIDATION_IMAGES)
    abnormal: list[str] = Field([], max_length=MAX_VALIDATION_IMAGES)


class AnomalyFitRequest(JobRequest):
    """Fit an anomaly model on a folder dataset: normal images (upload ids, or one ZIP upload),
    optionally abnormal ones (upload ids with optional masks, or the ZIP's abnormal/ and mask/
    folders). PatchCore (the default) fits in one pass; Reverse Distillation trains."""

    model_config = REQUEST
    INPUTS: ClassVar[tuple[str, ...]] = ("images.*", "archive", "abnormal.*", "abnormal_masks.*", "validation.normal.*",
                                         "validation.abnormal.*")  # upload ids, URLs or data: URIs

    name: Text = Field(min_length=1, max_length=200)
    model: AnomalyModelKind = Field("patchcore", description="patchcore (fitted, no training) or "
                                                             "reverse_distillation (trained: a longer job).")
    images: list[str] = Field([], max_length=MAX_TRAIN_IMAGES, description="Upload ids of normal images.")
    archive: str | None = Field(
        None, pattern=INPUT_REF, description="Upload id (or URL) of a ZIP: flat (every image normal) or with the folders "
                                             "normal/ (or good/), abnormal/ and optionally mask/ (a mask named as its "
                                             "abnormal image, with or without a _mask suffix).")
    abnormal: list[str] = Field([], max_length=MAX_ABNORMAL_IMAGES,
                                description="Upload ids of abnormal images (with `images`).")
    abnormal_masks: list[str | None] | None = Field(
        None, max_length=MAX_ABNORMAL_IMAGES,
        description="Upload ids of defect masks, one per abnormal image (null: none for that image); pixel AUROC "
                    "and pixel thresholds need one for every abnormal image.")
    validation: ValidationSet | None = Field(
        None, description="PatchCore without abnormal images only: with abnormal validation images F1-optimal "
                          "thresholds, normal only a 0.99 quantile. With abnormal images the validation split is "
                          "taken from them (anomalib's Folder).")
    backbone: Backbone | None = Field(None, description="Default: wide_resnet50_2 (pretrained), tiny (tiny profile).")
    coreset_ratio: float | None = Field(None, gt=0, le=1, description="PatchCore only; default 0.1.")
    image_size: int = Field(256, ge=64, le=1024, multiple_of=32)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seeds the split and the training; recorded.")
    max_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="Reverse Distillation only; default 200.")
    patience: int | None = Field(None, ge=0, le=MAX_PATIENCE, description="Reverse Distillation only: epochs without "
                                 "a better validation score before stopping (0: never stop early); default 3.")
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, description="Reverse Distillation only; default 16.")
    learning_rate: float | None = Field(None, gt=0, le=MAX_LEARNING_RATE,
                                        description="Reverse Distillation only (Adam); default 0.005.")

    @model_validator(mode="after")
    def _source(self):
        if bool(self.images) == bool(self.archive):
            raise ValueError("images: give normal images either as `images` (upload ids) or as one `archive` (ZIP upload)")
        if self.archive and (self.abnormal or self.abnormal_masks is not None):
            raise ValueError("abnormal: with `archive`, abnormal images and masks come from its abnormal/ and mask/ "
                             "folders")
        if self.abnormal_masks is not None and len(self.abnormal_masks) != len(self.abnormal):
            raise ValueError(f"abnormal_masks: {len(self.abnormal_masks)} masks for {len(self.abnormal)} abnormal "
                             "images; give one per abnormal image (null for none)")
        own, other = ((TRAINING_DEFAULTS, PATCHCORE_DEFAULTS) if self.model == "reverse_distillation"
                      else (PATCHCORE_DEFAULTS, TRAINING_DEFAULTS))
        stray = sorted(k for k in other if getattr(self, k) is not None)
        if stray:
            raise ValueError(f"{', '.join(stray)}: not a setting of model {self.model}")
        if self.validation is not None and (self.model == "reverse_distillation" or self.abnormal):
            raise ValueError("validation: the validation split is taken from the dataset's abnormal and normal "
                             "images (anomalib's Folder); leave `validation` out")
        for k, v in own.items():  # the effective request: every setting of the model explicit
            if getattr(self, k) is None:
                setattr(self, k, v)
        return self


def training_work(body: AnomalyFitRequest, normal_images: int) -> int:
    """The training work a fit asks for (0 for PatchCore): max_epochs x normal images, an upper
    bound of the epochs x training images it runs (the training split holds 80 % of them when
    the dataset has no normal test images)."""
    return int(body.max_epochs or 0) * normal_images if body.model == "reverse_distillation" else 0


class AnomalyScoreRequest(JobRequest):
    model_config = REQUEST
    INPUTS: ClassVar[tuple[str, ...]] = ("images.*",)  # upload ids, URLs or data: URIs

    model_id: str = Field(pattern=MODEL_ID)
    images: list[str] = Field(min_length=1, max_length=MAX_SCORE_IMAGES, description="Upload ids to score.")


MAX_THRESHOLD = 1e30


class ThresholdsPatch(BaseModel):
    model_config = REQUEST

    # scores are float32: a threshold beyond ~3.4e38 overflows and the normalised score becomes NaN
    image_threshold: float | None = Field(None, ge=-MAX_THRESHOLD, le=MAX_THRESHOLD,
                                          description="Raw image-score threshold (normalised to 0.5).")
    pixel_threshold: float | None = Field(None, ge=-MAX_THRESHOLD, le=MAX_THRESHOLD,
                                          description="Raw anomaly-map threshold for masks and boxes.")


class TrainingRecord(BaseModel):
    """A Reverse Distillation training: while the job runs (its `result.training`) and on the model."""

    model: str = "reverse_distillation"
    attempt: int = Field(description="The job attempt that reported this (a lost worker's job runs again).")
    resumed_from_epoch: int | None = Field(description="The checkpoint's epoch this attempt resumed after; null: from the start.")
    max_epochs: int
    epoch: int = Field(description="Epochs completed.")
    monitor: str | None = Field(description="What picks the best epoch: image_auroc (validation has both classes), "
                                            "val_loss (normal validation images only) or train_loss.")
    best_epoch: int | None
    best_value: float | None
    stopped_early: bool
    epochs_run: int | None = None
    history: list[dict[str, Any]] = Field(description="Per epoch: epoch, train_loss, val_loss, image_auroc, image_f1 "
                                                      "(F1 at the adaptive threshold), improved, best_epoch, early_stop, "
                                                      "seconds, ...")


class AnomalyModel(BaseModel):
    id: str
    name: str
    model: AnomalyModelKind = "patchcore"
    backbone: str
    image_size: int
    coreset_ratio: float | None = Field(None, description="PatchCore only.")
    thresholds: dict[str, float | str | None]
    counts: dict[str, int]
    test_metrics: dict[str, float | int | None] | None = Field(
        None, description="On the held-out test split (datasets with abnormal images): images, normal, abnormal, "
                          "image_auroc, image_f1 (at the image threshold), pixel_auroc (when every abnormal image has a mask).")
    validation_metrics: dict[str, float | None] | None = Field(None, description="Reverse Distillation: the best epoch's.")
    training: TrainingRecord | None = None
    training_config: dict[str, float | int] | None = Field(
        None, description="Reverse Distillation: max_epochs, patience, batch_size, learning_rate, seed.")
    split: dict[str, Any] | None = Field(None, description="The dataset split (anomalib Folder): seed, ratios, which "
                                                           "input went where, counts.")
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
    filename: str | None = Field(None, description="The upload's file name (as uploaded, or the URL's last part).")
    score: float
    normalized_score: float
    label: bool
    boxes: list[BoxOut]
    heat_map_url: str
    mask_url: str
    anomaly_map_url: str
    segmentation_url: str | None = Field(None, description="The mask's outline in red over the image "
                                                           "(anomalib's segmentation result).")


class AnomalyScoreResult(BaseModel):
    model_id: str
    model: AnomalyModelKind = "patchcore"
    items: list[ScoredImage]


class AnomalyFitResult(BaseModel):
    model_id: str
    model: AnomalyModelKind = "patchcore"
    thresholds: dict[str, float | str | None]
    counts: dict[str, int]
    test_metrics: dict[str, float | int | None] | None = None
    training: TrainingRecord | None = None
