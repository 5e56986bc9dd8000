"""The worker layer's one error type: every failure a job can end with, by code."""
from __future__ import annotations


class JobFailed(Exception):
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code or self.code


class InvalidInput(JobFailed):
    code = "invalid_input"


class JobCanceled(JobFailed):
    code = "canceled"


class OwnershipLost(JobFailed):
    """The lease expired and the job was re-queued: this attempt must stop and write nothing."""

    code = "ownership_lost"


class JobTimeout(JobFailed):
    code = "timeout"


class ModelsNotReady(JobFailed):
    code = "models_missing"
