"""Typed request and response bodies of the visionjobs API (/v1).

Mirrors the server's contract, ``openapi/openapi.json``; a test in the server repository
compares every model here with the committed spec (field names, which are required, types,
enum values), so drift fails a build.

Two deliberate differences from the server's own schemas:

* Request models carry no defaults and no limits. A field left out (or ``None``) is not
  sent, so the *server's* default applies, and limits (steps, prompt length, outputs, ...)
  are server settings that an operator may change: the server is their single authority
  and answers a 422 naming the field and its limit (raised here as ``ValidationError``).
* Response models accept fields they do not know (``extra="allow"``), so an older client
  keeps working against a newer server. ``Job.result`` is parsed into the model of the job's
  kind and stays a plain ``dict`` for kinds (or shapes) this client does not know.
"""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

UPLOAD_ID_PATTERN = r"^upl_[0-9a-f]{24}$"
JOB_ID_PATTERN = r"^job_[0-9a-f]{24}$"

_REQUEST = ConfigDict(extra="forbid")
_RESPONSE = ConfigDict(extra="allow")


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


# ------------------------------------------------------------------------------ requests

WebhookEvent = Literal["running", "succeeded", "failed", "canceled"]


class Webhook(BaseModel):
    """Notify ``url`` when the job enters one of ``events`` (server default: the final ones).
    Deliveries are signed with ``secret`` (see ``visionjobs_client.verify_webhook``)."""

    model_config = _REQUEST

    url: str
    events: Optional[list[WebhookEvent]] = None
    secret: str



class Stroke(BaseModel):
    """A vector colour stroke (a hint) in input-image pixel coordinates."""

    model_config = _REQUEST

    color: str = Field(description="`#RRGGBB`.")
    width: Optional[float] = None
    points: list[tuple[float, float]]


class Guidance(BaseModel):
    """``scale`` left out: the mode's default (cfg 7, autoguidance 2); the job's params show it."""

    model_config = _REQUEST

    mode: Optional[Literal["cfg", "autoguidance", "none"]] = None
    scale: Optional[float] = None


class ColorizationParity(BaseModel):
    """Switches back to the official Control Color code, one by one (server default: the
    project's ``all`` / ``aspect`` / ``leading`` / ``lab`` / ``gamut_fit``)."""

    model_config = _REQUEST

    sag_heads: Optional[Literal["all", "official"]] = None
    working_size: Optional[Literal["aspect", "official"]] = None
    timesteps: Optional[Literal["leading", "uniform"]] = None
    gray_input: Optional[Literal["lab", "official"]] = None
    l_merge: Optional[Literal["gamut_fit", "official"]] = None


class ColorizationRequest(BaseModel):
    """``POST /v1/colorizations`` (kind ``colorize``)."""

    model_config = _REQUEST

    image: str
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    strokes: Optional[list[Stroke]] = None
    stroke_image: Optional[str] = None
    exemplar: Optional[str] = None
    seed: Optional[int] = None
    steps: Optional[int] = None
    guidance: Optional[Guidance] = None
    sag_scale: Optional[float] = None
    sag_threshold: Optional[int] = None
    deformable_decoder: Optional[bool] = None
    auto_caption: Optional[bool] = None
    parity: Optional[Union[Literal["project", "official"], ColorizationParity]] = None
    num_outputs: Optional[int] = None
    output_format: Optional[Literal["png", "jpeg", "webp"]] = None
    webhook: Optional[Webhook] = None


class KvSharing(BaseModel):
    model_config = _REQUEST

    enabled: Optional[bool] = None
    steps: Optional[tuple[int, int]] = None
    layers: Optional[tuple[int, int]] = None
    subject_tokens: Optional[list[Union[int, str]]] = None


class VideoGenerationRequest(BaseModel):
    """``POST /v1/video-generations`` (kind ``video.generate``, DiTCtrl)."""

    model_config = _REQUEST

    prompts: list[str]
    segments: Optional[int] = None
    overlap: Optional[int] = None
    transition_segments: Optional[int] = None
    kv_sharing: Optional[KvSharing] = None
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[int] = None
    metrics: Optional[list[Literal["cscv"]]] = None
    webhook: Optional[Webhook] = None


class VideoEditRequest(BaseModel):
    """``POST /v1/video-edits`` (kind ``video.edit``, Tune-A-Video): give ``video`` and
    ``source_prompt`` to tune on a clip, or ``tuned_model`` to reuse an earlier tuning."""

    model_config = _REQUEST

    video: Optional[str] = None
    tuned_model: Optional[str] = None
    source_prompt: Optional[str] = None
    edits: list[str]
    tune_steps: Optional[int] = None
    frames: Optional[int] = None
    frame_stride: Optional[Union[int, Literal["spread"]]] = None
    start_frame: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    fps: Optional[int] = None
    gif: Optional[bool] = None
    webhook: Optional[Webhook] = None


class ValidationSet(BaseModel):
    """Labelled images for thresholds: upload ids of normal and abnormal images."""

    model_config = _REQUEST

    normal: Optional[list[str]] = None
    abnormal: Optional[list[str]] = None


AnomalyModelKind = Literal["patchcore", "reverse_distillation"]


class AnomalyFitRequest(BaseModel):
    """``POST /v1/anomaly-models`` (kind ``anomaly.fit``): a folder dataset, normal images as
    upload ids (optionally ``abnormal`` ones and their ``abnormal_masks``), or one ZIP
    ``archive`` upload (flat, or with normal/, abnormal/ and mask/ folders). ``model``:
    PatchCore (default) or Reverse Distillation, trained with ``max_epochs``, ``patience``,
    ``batch_size``, ``learning_rate``."""

    model_config = _REQUEST

    name: str
    model: Optional[AnomalyModelKind] = None
    images: Optional[list[str]] = None
    archive: Optional[str] = None
    abnormal: Optional[list[str]] = None
    abnormal_masks: Optional[list[Optional[str]]] = None
    validation: Optional[ValidationSet] = None
    backbone: Optional[Literal["wide_resnet50_2", "resnet18", "tiny"]] = None
    coreset_ratio: Optional[float] = None
    image_size: Optional[int] = None
    seed: Optional[int] = None
    max_epochs: Optional[int] = None
    patience: Optional[int] = None
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    webhook: Optional[Webhook] = None


class AnomalyScoreRequest(BaseModel):
    """``POST /v1/anomaly-scores`` (kind ``anomaly.score``)."""

    model_config = _REQUEST

    model_id: str
    images: list[str]
    webhook: Optional[Webhook] = None


class PriorPreservation(BaseModel):
    """DreamBooth's prior preservation: ``class_images`` generated by the base model join the tuning."""

    model_config = _REQUEST

    enabled: Optional[bool] = None
    class_images: Optional[int] = None
    class_image_steps: Optional[int] = None


class TuningSettings(BaseModel):
    """DreamBooth-LoRA tuning of an expert generation that tunes (no ``subject_model``)."""

    model_config = _REQUEST

    identifier: Optional[str] = None
    steps: Optional[int] = None
    rank: Optional[int] = None
    learning_rate: Optional[float] = None
    train_text_encoder: Optional[bool] = None
    prior_preservation: Optional[PriorPreservation] = None


class SubjectGenerationRequest(BaseModel):
    """``POST /v1/subject-generations`` (kind ``subject.generate``): images of the subject of
    ``subject_images`` (upload ids), in-context (BLIP-Diffusion) or expert (DreamBooth-LoRA;
    with ``subject_model`` no tuning)."""

    model_config = _REQUEST

    subject_images: Optional[list[str]] = None
    subject_class: Optional[str] = None
    prompt: str
    negative_prompt: Optional[str] = None
    method: Optional[Literal["in_context", "expert"]] = None
    subject_model: Optional[str] = None
    tuning: Optional[TuningSettings] = None
    num_outputs: Optional[int] = None
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    metrics: Optional[list[Literal["clip_i", "clip_t", "dino"]]] = None
    webhook: Optional[Webhook] = None


class SubjectModelRequest(BaseModel):
    """``POST /v1/subject-models`` (kind ``subject.tune``): DreamBooth-LoRA tuning on 1-8 photos."""

    model_config = _REQUEST

    subject_images: list[str]
    subject_class: str
    identifier: Optional[str] = None
    steps: Optional[int] = None
    rank: Optional[int] = None
    learning_rate: Optional[float] = None
    train_text_encoder: Optional[bool] = None
    prior_preservation: Optional[PriorPreservation] = None
    seed: Optional[int] = None
    webhook: Optional[Webhook] = None


class ThresholdsPatch(BaseModel):
    """``PATCH /v1/anomaly-models/{id}``: raw thresholds (the normalisation maps them to 0.5)."""

    model_config = _REQUEST

    image_threshold: Optional[float] = None
    pixel_threshold: Optional[float] = None


# ----------------------------------------------------------------------------- responses


class Upload(BaseModel):
    model_config = _RESPONSE

    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
    width: Optional[int] = None
    height: Optional[int] = None


class WebhookDelivery(BaseModel):
    model_config = _RESPONSE

    status: Literal["retrying", "delivered", "failed"]
    attempts: int
    last_status_code: Optional[int] = None
    last_error: Optional[str] = None
    delivered_at: Optional[float] = None
    next_attempt_at: Optional[float] = None


class WebhookState(BaseModel):
    """A job's webhook (without its secret) and the delivery state per event."""

    model_config = _RESPONSE

    url: str
    events: list[WebhookEvent]
    deliveries: dict[str, WebhookDelivery] = {}


class JobError(BaseModel):
    model_config = _RESPONSE

    code: str
    message: str


class ImageOutput(BaseModel):
    model_config = _RESPONSE

    url: str
    expires_at: datetime
    width: int
    height: int
    content_type: str


class ColorizationResult(BaseModel):
    model_config = _RESPONSE

    images: list[ImageOutput]
    seed: int
    caption: Optional[str] = None
    prompt: Optional[str] = None
    denoising_steps: Optional[int] = None
    precision: Optional[str] = None


class VideoOutput(BaseModel):
    model_config = _RESPONSE

    url: str
    expires_at: datetime
    frames: int
    fps: int
    width: int
    height: int
    content_type: str


class VideoGenerationResult(BaseModel):
    model_config = _RESPONSE

    video: VideoOutput
    thumbnail_url: str
    thumbnail_expires_at: datetime
    segments: int
    latent_frames: int
    seed: int
    metrics: dict[str, float] = {}


class EditedVideo(BaseModel):
    model_config = _RESPONSE

    prompt: str
    url: str
    expires_at: datetime
    frames: int
    fps: int
    width: int
    height: int
    content_type: str
    gif_url: Optional[str] = None
    gif_expires_at: Optional[datetime] = None


class VideoEditResult(BaseModel):
    model_config = _RESPONSE

    tuned_model_id: str
    tuning: Literal["ran", "skipped"]
    tune_seconds: float
    videos: list[EditedVideo]
    seed: int


class TrainingRecord(BaseModel):
    """A Reverse Distillation training: on the running job (``result["training"]``) and on the
    model. ``history``: one dict per epoch (epoch, train_loss, val_loss, image_auroc, image_f1, ...)."""

    model_config = _RESPONSE

    model: str = "reverse_distillation"
    attempt: int
    resumed_from_epoch: Optional[int]
    max_epochs: int
    epoch: int
    monitor: Optional[str]
    best_epoch: Optional[int]
    best_value: Optional[float]
    stopped_early: bool
    epochs_run: Optional[int] = None
    history: list[dict[str, Any]]


class AnomalyFitResult(BaseModel):
    model_config = _RESPONSE

    model_id: str
    model: AnomalyModelKind = "patchcore"
    thresholds: dict[str, Union[float, str, None]]
    counts: dict[str, int]
    test_metrics: Optional[dict[str, Union[float, int, None]]] = None
    training: Optional[TrainingRecord] = None


class BoxOut(BaseModel):
    """A connected component of the anomaly mask, in the scored image's pixels."""

    model_config = _RESPONSE

    x: int
    y: int
    w: int
    h: int
    area: int
    score: float


class ScoredImage(BaseModel):
    model_config = _RESPONSE

    image: str
    filename: Optional[str] = None
    score: float
    normalized_score: float
    label: bool
    boxes: list[BoxOut]
    heat_map_url: str
    mask_url: str
    anomaly_map_url: str
    segmentation_url: Optional[str] = None


class AnomalyScoreResult(BaseModel):
    model_config = _RESPONSE

    model_id: str
    model: AnomalyModelKind = "patchcore"
    items: list[ScoredImage]


class AnomalyModel(BaseModel):
    model_config = _RESPONSE

    id: str
    name: str
    model: AnomalyModelKind = "patchcore"
    backbone: str
    image_size: int
    coreset_ratio: Optional[float] = None
    thresholds: dict[str, Union[float, str, None]]
    counts: dict[str, int]
    test_metrics: Optional[dict[str, Union[float, int, None]]] = None
    validation_metrics: Optional[dict[str, Optional[float]]] = None
    training: Optional[TrainingRecord] = None
    training_config: Optional[dict[str, Union[float, int]]] = None
    split: Optional[dict[str, Any]] = None
    job_id: str
    created_at: datetime
    updated_at: datetime


class AnomalyModelList(BaseModel):
    model_config = _RESPONSE

    items: list[AnomalyModel]


class SubjectGenerationResult(BaseModel):
    model_config = _RESPONSE

    images: list[ImageOutput]
    seed: int
    method: Literal["in_context", "expert"]
    tuning: Literal["none", "ran", "skipped"]
    subject_model: Optional[str] = None
    metrics: dict[str, float] = {}


class SubjectModelResult(BaseModel):
    model_config = _RESPONSE

    subject_model: str
    steps: int
    tune_seconds: float
    final_loss: Optional[float]
    num_parameters: int
    size_bytes: int


class SubjectModel(BaseModel):
    model_config = _RESPONSE

    id: str
    subject_class: str
    identifier: str
    instance_prompt: Optional[str]
    base_model: str
    model_profile: Optional[str]
    training: dict[str, Any]
    num_parameters: int
    size_bytes: int
    job_id: str
    created_at: datetime


class SubjectModelList(BaseModel):
    model_config = _RESPONSE

    items: list[SubjectModel]


class TunedVideoModel(BaseModel):
    """A Tune-A-Video tuning (``tvm_...``) a video edit kept; pass its id as ``tuned_model``."""

    model_config = _RESPONSE

    id: str
    base_model: str
    source_prompt: str
    clip: dict[str, Any]
    tune_steps: int
    size_bytes: Optional[int] = None
    job_id: str
    created_at: datetime


class TunedVideoModelPage(BaseModel):
    model_config = _RESPONSE

    items: list[TunedVideoModel]
    next_cursor: Optional[str]


#: job kind -> the model its result is parsed into
RESULT_MODELS: dict[str, type[BaseModel]] = {
    "colorize": ColorizationResult,
    "video.generate": VideoGenerationResult,
    "video.edit": VideoEditResult,
    "anomaly.fit": AnomalyFitResult,
    "anomaly.score": AnomalyScoreResult,
    "subject.generate": SubjectGenerationResult,
    "subject.tune": SubjectModelResult,
}

#: `dict` first with left-to-right matching: Job's validator has already turned a known
#: kind's result into its model instance; anything else stays the dict it came as.
JobResult = Union[dict[str, Any], ColorizationResult, VideoGenerationResult, VideoEditResult, AnomalyFitResult,
                  AnomalyScoreResult, SubjectGenerationResult, SubjectModelResult, None]


class KindWorker(BaseModel):
    """A live worker serving a kind, as it last reported itself."""

    model_config = _RESPONSE

    worker: Optional[str]
    profile: Optional[str]
    weights_fingerprint: Optional[str]
    ready: bool
    missing: list[str] = []
    features: dict[str, list[str]] = {}


class KindInfo(BaseModel):
    """GET /v1/kinds: a job kind, its route, its input and result JSON schemas, its live workers."""

    model_config = _RESPONSE

    name: str
    description: str
    path: str
    queue: str
    input_schema: dict[str, Any]
    result_schema: dict[str, Any]
    workers: list[KindWorker]


class KindList(BaseModel):
    model_config = _RESPONSE

    items: list[KindInfo]


class JobMetrics(BaseModel):
    """Where a final job's time went, in seconds."""

    model_config = _RESPONSE

    queue_s: float
    load_s: float
    run_s: Optional[float] = None
    upload_s: float


class JobLogs(BaseModel):
    """GET /v1/jobs/{id}/logs: the kept lines of the job's log, oldest first."""

    model_config = _RESPONSE

    job_id: str
    total: int
    dropped: int
    lines: list[str]


class Job(BaseModel):
    model_config = _RESPONSE

    id: str
    kind: str
    status: JobStatus
    progress: float
    stage: Optional[str]
    queue_position: Optional[int]
    attempt: int
    created_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    params: dict[str, Any]
    error: Optional[JobError]
    result: JobResult = Field(union_mode="left_to_right")
    model_profile: Optional[str]
    weights_fingerprint: Optional[str] = None
    metrics: Optional[JobMetrics] = None
    webhook: Optional[WebhookState] = None

    @model_validator(mode="before")
    @classmethod
    def _typed_result(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("result"), dict):
            model = RESULT_MODELS.get(str(data.get("kind")))
            if model is not None:
                try:
                    data = {**data, "result": model.model_validate(data["result"])}
                except ValueError:  # a shape this client does not know: keep the dict
                    pass
        return data

    @property
    def final(self) -> bool:
        """succeeded, failed or canceled: the job will not change any more."""
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.succeeded

    def raise_for_status(self) -> "Job":
        """Return the job when it succeeded (or is not final yet); raise ``JobFailed`` when it
        failed or was canceled."""
        if self.status in (JobStatus.failed, JobStatus.canceled):
            from visionjobs_client.errors import JobFailed

            raise JobFailed(self)
        return self


class JobPage(BaseModel):
    model_config = _RESPONSE

    items: list[Job]
    next_cursor: Optional[str]


class Problem(BaseModel):
    """An RFC 9457 problem document as the API renders errors."""

    model_config = _RESPONSE

    type: str = "about:blank"
    title: str = ""
    status: int = 0
    detail: str = ""
    instance: str = ""
    code: str = ""
    errors: Optional[list[dict[str, Any]]] = None
    errors_total: Optional[int] = None  # validation problems found; `errors` lists the first 50


# ----------------------------------------------------------------------------- job kinds

#: job kind -> submission path
KIND_PATHS: dict[str, str] = {
    "colorize": "/v1/colorizations",
    "video.generate": "/v1/video-generations",
    "video.edit": "/v1/video-edits",
    "anomaly.fit": "/v1/anomaly-models",
    "anomaly.score": "/v1/anomaly-scores",
    "subject.generate": "/v1/subject-generations",
    "subject.tune": "/v1/subject-models",
}

#: job kind -> request body model
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "colorize": ColorizationRequest,
    "video.generate": VideoGenerationRequest,
    "video.edit": VideoEditRequest,
    "anomaly.fit": AnomalyFitRequest,
    "anomaly.score": AnomalyScoreRequest,
    "subject.generate": SubjectGenerationRequest,
    "subject.tune": SubjectModelRequest,
}
