"""Shared parts of the API contract: jobs, uploads, problems, limits."""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UPLOAD_ID = r"^upl_[0-9a-f]{24}$"
JOB_ID = r"^job_[0-9a-f]{24}$"
MAX_STEPS, MAX_OUTPUTS, MAX_PROMPT = 100, 4, 1000
MAX_SEED = 2**32 - 1
MAX_STROKES, MAX_STROKE_POINTS, MAX_TOTAL_POINTS, MAX_STROKE_WIDTH = 256, 4096, 20000, 256
REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)  # unknown fields and NaN/inf are 422s


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


class Upload(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
    width: int | None = None
    height: int | None = None


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[dict[str, Any]] | None = None
