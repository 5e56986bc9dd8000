"""Submitting jobs and rendering them for clients (URLs signed afresh on every read)."""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone
from typing import Any

from service.core.errors import ApiError
from service.dispatch import Dispatcher
from service.schemas import Job
from service.storage.base import ObjectStore
from service.store.base import JobRecord, JobStore, new_id

log = logging.getLogger("visionjobs.jobs")


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def submit(store: JobStore, dispatcher: Dispatcher, *, tenant: str, kind: str, params: dict[str, Any],
           max_attempts: int, model_profile: str | None, idempotency_key: str | None) -> tuple[JobRecord, bool]:
    if "seed" in params and params["seed"] is None:
        params["seed"] = secrets.randbelow(2**32)  # fixed now, so every attempt draws the same noise
    job = JobRecord(id=new_id("job"), tenant=tenant, kind=kind, params=params, max_attempts=max_attempts,
                    model_profile=model_profile)
    job, created = store.create_job(job, idempotency_key)
    if created:
        try:
            dispatcher.dispatch(job.id, kind)
        except Exception as exc:
            log.error("could not queue job %s: %s", job.id, exc)
            store.request_cancel(job.id)
            raise ApiError(503, "Service unavailable", "the queue cannot be reached; the job was not accepted",
                           code="queue_unavailable", headers={"Retry-After": "5"})
    return job, created


def _sign_files(value: Any, objects: ObjectStore, tenant: str, base_url: str, ttl_s: int) -> Any:
    """Object keys in a stored result become signed URLs for the client."""
    if isinstance(value, list):
        return [_sign_files(v, objects, tenant, base_url, ttl_s) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k == "key" or (k.endswith("_key") and isinstance(v, str)):
            # {"key": k} -> {"url", "expires_at"}; {"thumbnail_key": k} -> {"thumbnail_url", "thumbnail_expires_at"}
            prefix = k[: -len("key")]
            signed = objects.signed_url(v, tenant=tenant, base_url=base_url, ttl_s=ttl_s)
            out[prefix + "url"], out[prefix + "expires_at"] = signed.url, _ts(signed.expires_at)
        else:
            out[k] = _sign_files(v, objects, tenant, base_url, ttl_s)
    return out


def render(job: JobRecord, store: JobStore, objects: ObjectStore, base_url: str, ttl_s: int) -> Job:
    result = _sign_files(job.result, objects, job.tenant, base_url, ttl_s) if job.result else None
    return Job(id=job.id, kind=job.kind, status=job.status, progress=min(max(job.progress, 0.0), 1.0),
               stage=job.stage, queue_position=store.queue_position(job), attempt=job.attempt,
               created_at=_ts(job.created_at), started_at=_ts(job.started_at), finished_at=_ts(job.finished_at),
               params=job.params, error=job.error, result=result, model_profile=job.model_profile)
