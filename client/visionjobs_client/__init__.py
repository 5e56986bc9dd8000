"""visionjobs-client: a typed Python client for the visionjobs GPU inference job API.

    from visionjobs_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as vj:
        job = vj.colorize("photo.jpg", prompt="a red vintage car", seed=7)
        for state in vj.stream(job):                # live progress over server-sent events
            print(state.status.value, f"{state.progress:.0%}", state.stage)
        vj.download(state.result.images[0], "colorized.png")

``AsyncClient`` has the same methods, awaitable. Errors are ``ApiError`` subclasses carrying
the server's problem+json (``ValidationError``, ``NotFound``, ``Unauthorized``,
``RateLimited``, ``Unavailable``, ...).
"""
from visionjobs_client._base import KIND_PATHS, __version__, output_files
from visionjobs_client.aio import AsyncClient
from visionjobs_client.client import Client
from visionjobs_client.errors import (
    ApiConnectionError, ApiError, Conflict, Forbidden, JobFailed, NotFound, RateLimited, ServerError, Unauthorized,
    Unavailable, ValidationError, VisionJobsError, WaitTimeout,
)
from visionjobs_client.models import (
    FINAL_STATUSES, AnomalyFitRequest, AnomalyFitResult, AnomalyModel, AnomalyModelList, AnomalyScoreRequest,
    AnomalyScoreResult, BoxOut, ColorizationParity, ColorizationRequest, ColorizationResult, EditedVideo, Guidance,
    ImageOutput, Job, JobError, JobPage, JobStatus, KvSharing, PriorPreservation, Problem, ScoredImage, Stroke,
    SubjectGenerationRequest, SubjectGenerationResult, SubjectModel, SubjectModelList, SubjectModelRequest,
    SubjectModelResult, ThresholdsPatch, TrainingRecord, TunedVideoModel, TunedVideoModelPage, TuningSettings, Upload, ValidationSet, VideoEditRequest,
    VideoEditResult, VideoGenerationRequest, VideoGenerationResult, VideoOutput, Webhook, WebhookDelivery,
    WebhookState,
)
from visionjobs_client.settings import API_KEY_ENV, URL_ENV, ClientSettings
from visionjobs_client.uploads import array_png, is_upload_id
from visionjobs_client.webhooks import WebhookSignatureError, sign_webhook, verify_webhook

__all__ = [
    "API_KEY_ENV", "AnomalyFitRequest", "AnomalyFitResult", "AnomalyModel", "AnomalyModelList",
    "AnomalyScoreRequest", "AnomalyScoreResult", "ApiConnectionError", "BoxOut", "ApiError", "AsyncClient", "Client",
    "ClientSettings", "ColorizationParity", "ColorizationRequest", "ColorizationResult", "Conflict", "EditedVideo", "FINAL_STATUSES",
    "Forbidden", "Guidance", "ImageOutput", "Job", "JobError", "JobFailed", "JobPage", "JobStatus", "KIND_PATHS",
    "KvSharing", "NotFound", "Problem", "RateLimited", "ScoredImage", "ServerError", "Stroke", "ThresholdsPatch", "TrainingRecord",
    "URL_ENV", "Unauthorized", "Unavailable", "Upload", "ValidationError", "ValidationSet", "VideoEditRequest", "VideoEditResult", "VideoGenerationRequest",
    "VideoGenerationResult", "VideoOutput", "VisionJobsError", "WaitTimeout", "Webhook", "WebhookDelivery",
    "WebhookSignatureError", "WebhookState", "__version__", "array_png", "is_upload_id", "output_files", "sign_webhook",
    "verify_webhook", "PriorPreservation", "SubjectGenerationRequest", "SubjectGenerationResult", "SubjectModel",
    "SubjectModelList", "SubjectModelRequest", "SubjectModelResult", "TuningSettings", "TunedVideoModel",
    "TunedVideoModelPage",
]
