"""The Job resource: every kind's result schema is listed on it."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.schemas.anomaly import AnomalyFitResult, AnomalyScoreResult
from service.schemas.colorization import ColorizationResult
from service.schemas.common import JobError, JobStatus, WebhookState
from service.schemas.subject import SubjectGenerationResult, SubjectModelResult
from service.schemas.video import VideoEditResult, VideoGenerationResult


class JobMetrics(BaseModel):
    """Where the job's time went (seconds), measured by the worker on the final attempt."""

    queue_s: float = Field(description="From creation to the final attempt's start.")
    load_s: float = Field(description="Loading models (0 when they were warm).")
    run_s: float | None = Field(None, description="Running the job, loading and uploads excluded.")
    upload_s: float = Field(description="Writing outputs to storage.")


class JobLogs(BaseModel):
    job_id: str
    total: int = Field(description="Lines written so far, dropped ones included.")
    dropped: int = Field(description="The oldest lines no longer kept (the log keeps its last "
                                     "VISIONJOBS_JOB_LOG_BYTES bytes).")
    lines: list[str] = Field(description="The kept lines, oldest first: `<UTC time> <LEVEL> <message>`.")


class Job(BaseModel):
    id: str
    kind: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    stage: str | None
    queue_position: int | None = Field(description="1-based position in its queue while queued.")
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any]
    error: JobError | None
    result: (ColorizationResult | VideoGenerationResult | VideoEditResult | AnomalyFitResult
                                  | AnomalyScoreResult | SubjectGenerationResult | SubjectModelResult) | dict[str, Any] | None = Field(
        description="Kind-specific; URLs are signed afresh on every read.")
    model_profile: str | None
    weights_fingerprint: str | None = Field(None, description="Digest of the weights the final attempt ran "
                                                              "(as in GET /v1/kinds for live workers).")
    metrics: JobMetrics | None = Field(None, description="Set when the job is final.")
    webhook: WebhookState | None = Field(None, description="The job's webhook and its delivery state per event.")


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")
