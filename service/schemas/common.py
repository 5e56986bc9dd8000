"""Shared parts of the API contract: jobs, uploads, problems, limits."""
from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

UPLOAD_ID = r"^upl_[0-9a-f]{24}$"
# Where an upload id is accepted, a URL or a data: URI is too: the API fetches it into an upload
# first (service/url_inputs.py); each request model lists those fields in `INPUTS`.
INPUT_REF = r"^(upl_[0-9a-f]{24}|[hH][tT][tT][pP][sS]?://\S+|data:[^,]*,.*)$"
INPUT_HELP = " An `https://` URL or a `data:` URI is accepted too: it is fetched into an upload first."
JOB_ID = r"^job_[0-9a-f]{24}$"
MAX_STEPS, MAX_OUTPUTS, MAX_PROMPT = 100, 4, 1000
MAX_SEED = 2**32 - 1
MAX_STROKES, MAX_STROKE_POINTS, MAX_TOTAL_POINTS, MAX_STROKE_WIDTH = 256, 4096, 20000, 256
REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)  # unknown fields and NaN/inf are 422s

# Text fields (prompts, names) refuse C0 control characters other than tab, newline and carriage
# return: NUL truncates strings in C libraries and tokenizers, ESC sequences rewrite terminals that
# show logs. Documented in the schema as a pattern, enforced with a message that names the character.
NO_CONTROL_CHARS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def no_control_chars(value: str) -> str:
    found = _CONTROL_CHAR.search(value)
    if found:
        raise ValueError(f"control character U+{ord(found.group()):04X} at position {found.start()} is not allowed "
                         "(tab, newline and carriage return are)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


# Every prompt-like field shares these (and so the same validator). Length constraints come
# before the validators, so pydantic checks them on the string itself (its usual messages).
_NO_CONTROL = (AfterValidator(no_control_chars), Field(json_schema_extra={"pattern": NO_CONTROL_CHARS}))
Text = Annotated[str, _NO_CONTROL[0], _NO_CONTROL[1]]
Prompt = Annotated[str, Field(max_length=MAX_PROMPT), _NO_CONTROL[0], _NO_CONTROL[1]]
RequiredPrompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT), AfterValidator(_not_blank),
                           _NO_CONTROL[0], _NO_CONTROL[1]]


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


WebhookEvent = Literal["running", "succeeded", "failed", "canceled"]


class Webhook(BaseModel):
    model_config = REQUEST

    url: str = Field(max_length=2048, pattern=r"^https?://", description="Public http(s) endpoint to POST events to.")
    events: list[WebhookEvent] = Field(["succeeded", "failed", "canceled"], min_length=1, max_length=4)
    secret: str = Field(min_length=16, max_length=256, description="HMAC-SHA256 key of the Standard Webhooks "
                        "signature (`webhook-signature`; a `whsec_<base64>` secret: the bytes it encodes); never "
                        "shown again.")


class JobRequest(BaseModel):
    """Fields every submission accepts."""

    model_config = REQUEST

    webhook: Webhook | None = Field(None, description="Notify this URL when the job enters one of `events`.")


class WebhookDelivery(BaseModel):
    status: Literal["retrying", "delivered", "failed"]
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    next_attempt_at: float | None = None


class WebhookState(BaseModel):
    url: str
    events: list[WebhookEvent]
    deliveries: dict[str, WebhookDelivery] = {}


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[dict[str, Any]] | None = None
    errors_total: int | None = Field(None, description="Validation problems found; `errors` lists the first 50.")


def field_error(field: str, message: str, value: Any, model: BaseModel) -> ValidationError:
    """A validation error located at `field` (a dotted path), for model-level validators: the
    problem+json then names the field, as for a field's own constraint."""
    loc = tuple(int(p) if p.isdigit() else p for p in field.split("."))
    return ValidationError.from_exception_data(type(model).__name__, [InitErrorDetails(
        type=PydanticCustomError("value_error", "Value error, {message}", {"message": message}), loc=loc, input=value)])
