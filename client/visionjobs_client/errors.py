"""Typed exceptions. HTTP errors carry the server's RFC 9457 problem document."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import httpx

    from visionjobs_client.models import Job, Problem


class VisionJobsError(Exception):
    """Base of every error this client raises."""


class ApiError(VisionJobsError):
    """The API answered with an error status. ``problem`` is its problem+json body (or one
    made up from the status when the body was not problem+json, e.g. from a proxy)."""

    status: int
    problem: "Problem"

    def __init__(self, problem: "Problem", *, method: str = "", url: str = "",
                 headers: Optional["httpx.Headers"] = None, retry_after: Optional[float] = None):
        self.problem = problem
        self.status = problem.status
        self.method, self.url = method, url
        self.headers = headers
        self.retry_after = retry_after
        text = problem.detail or problem.title or f"HTTP {problem.status}"
        super().__init__(f"{problem.status} {problem.code or problem.title}: {text}" if problem.status else text)

    @property
    def code(self) -> str:
        """Machine-readable code: validation_error, not_found, unauthorized, ..."""
        return self.problem.code

    @property
    def title(self) -> str:
        return self.problem.title

    @property
    def detail(self) -> str:
        return self.problem.detail

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Field-level errors: ``[{"field": "steps", "message": ..., "limit": 100}, ...]``."""
        return list(self.problem.errors or [])

    @property
    def fields(self) -> list[str]:
        """The fields named by ``errors``, in order."""
        return [str(e.get("field")) for e in self.errors if e.get("field") is not None]


class ValidationError(ApiError):
    """400/413/422: the request was refused; ``errors`` names each field (and its limit)."""


class Unauthorized(ApiError):
    """401: missing or unknown API key."""


class Forbidden(ApiError):
    """403."""


class NotFound(ApiError):
    """404: no such resource for this tenant (another tenant's resources are 404 too)."""


class Conflict(ApiError):
    """409."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` seconds when the server said so."""


class Unavailable(ApiError):
    """503 (also 502/504): the service or one of its stores cannot serve now."""


class ServerError(ApiError):
    """Another 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {400: ValidationError, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 413: ValidationError, 422: ValidationError,
                                         429: RateLimited, 502: Unavailable, 503: Unavailable, 504: Unavailable}


def error_class(status: int) -> type[ApiError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


class ApiConnectionError(VisionJobsError):
    """The API could not be reached (after the retries)."""


class WaitTimeout(VisionJobsError, TimeoutError):
    """``wait``/``stream`` gave up before the job reached a final state; ``job`` is the last
    state seen."""

    def __init__(self, job: "Job", timeout: float):
        self.job, self.timeout = job, timeout
        super().__init__(f"job {job.id} is still {job.status.value} after {timeout:g} s")


class JobFailed(VisionJobsError):
    """The job ended failed or canceled (``Job.raise_for_status``, ``wait(..., check=True)``)."""

    def __init__(self, job: "Job"):
        self.job = job
        err = job.error
        super().__init__(f"job {job.id} {job.status.value}" + (f": {err.code}: {err.message}" if err else ""))

    @property
    def code(self) -> Optional[str]:
        return self.job.error.code if self.job.error else None
