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


class JobHandedBack(OwnershipLost):
    """The worker is stopping: this attempt ends at its next check and the job goes back to
    the queue (a batch partner that cannot be handed back is left to its lease: never lost)."""

    code = "handed_back"


class JobTimeout(JobFailed):
    code = "timeout"


class ModelsNotReady(JobFailed):
    code = "models_missing"
