"""The API contract: request and response bodies of /v1 (openapi/openapi.json is generated from these)."""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

UPLOAD_ID = r"^upl_[0-9a-f]{24}$"
JOB_ID = r"^job_[0-9a-f]{24}$"
MAX_STEPS, MAX_OUTPUTS, MAX_PROMPT = 100, 4, 1000
MAX_SEED = 2**32 - 1


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class JobError(BaseModel):
    code: str = Field(description="Machine-readable: canceled, worker_lost, out_of_memory, timeout, invalid_input, internal_error, ...")
    message: str


class ImageOutput(BaseModel):
    url: str = Field(description="Absolute, signed, expiring GET URL.")
    expires_at: datetime
    width: int
    height: int
    content_type: str


class ColorizationResult(BaseModel):
    images: list[ImageOutput]
    seed: int


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
    result: ColorizationResult | dict[str, Any] | None = Field(
        description="Kind-specific; URLs are signed afresh on every read.")
    model_profile: str | None


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class Upload(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
    width: int | None = None
    height: int | None = None


class ColorizationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(pattern=UPLOAD_ID, description="Upload id of the photo (grayscale or colour).")
    prompt: str = Field("", max_length=MAX_PROMPT, description="Optional text describing the colours.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed; chosen and returned when absent.")
    steps: int = Field(20, ge=1, le=MAX_STEPS, description="DDIM steps.")
    num_outputs: int = Field(1, ge=1, le=MAX_OUTPUTS, description="Images generated in one batch.")


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[dict[str, Any]] | None = None
