"""Submitting jobs and rendering them for clients (URLs signed afresh on every read)."""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone
from typing import Any

from service.core.errors import ApiError, field_error
from service.kinds import KINDS
from service.limits import too_many
from service.webhooks import validate_request
from service.schemas import Job
from service.storage.base import ObjectStore
from service.store.base import JobRecord, JobStore, new_id

log = logging.getLogger("visionjobs.jobs")
# A queued job whose message was never sent (broker down at the wrong moment) is sent again by
# the reaper after this long; a duplicate message is harmless (the claim is atomic).
REDISPATCH_AFTER_S = 300.0


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


NO_WORKER_RETRY_S = 30  # workers report every 30 s (worker/capabilities.py)


def live_workers(store, kind: str) -> tuple[list[dict], list[dict]]:
    """(reports of live workers serving `kind`, those of them ready to run it)."""
    caps = store.get_capabilities(kind)
    return caps, [c for c in caps if c.get("ready", True)]


def check_workers(ctx, kind: str, params: dict[str, Any]) -> None:
    """Refuse at once what no live worker can run, from the workers' reports: 503 + Retry-After
    when none serves the kind, 422 naming the missing files when none has its weights or the
    optional feature a parameter asks for (`JobKind.wants`)."""
    if not ctx.settings.refuse_unserved:
        return
    caps, ready = live_workers(ctx.store, kind)
    if not caps:
        raise ApiError(503, "Service unavailable", f"no live worker serves {kind} jobs now; start one "
                       f"(`visionjobs worker --queues {KINDS[kind].queue}`) or retry later",
                       code="no_worker", headers={"Retry-After": str(NO_WORKER_RETRY_S)})
    if not ready:
        missing = sorted({m for c in caps for m in c.get("missing", [])})
        raise ApiError(422, "Models missing", f"no live worker can run {kind}: pretrained weights missing under "
                       f"VISIONJOBS_MODEL_DIR: {', '.join(missing)} (`visionjobs models fetch --kind {kind}`)",
                       code="models_missing", errors=[{"field": "kind", "message": "weights missing", "missing": missing}])
    wants = KINDS[kind].wants(params) if KINDS[kind].wants else {}
    for feature, field in wants.items():
        absent = [c.get("features", {}).get(feature) for c in ready]
        if all(absent):  # every ready worker lacks it (a worker that does not report the feature has it)
            raise field_error(field, f"no live worker can run this ({feature}): missing under VISIONJOBS_MODEL_DIR: "
                                     f"{', '.join(absent[0])}", missing=absent[0])


def submit(ctx, *, tenant: str, kind: str, params: dict[str, Any],
           idempotency_key: str | None) -> tuple[JobRecord, bool]:
    """Create the job (or find the one this Idempotency-Key made) and hand it to the workers."""
    store, settings = ctx.store, ctx.settings
    check_workers(ctx, kind, params)
    if settings.max_active_jobs and store.active_jobs(tenant) >= settings.max_active_jobs:
        raise too_many(f"this key has {settings.max_active_jobs} queued or running jobs, the limit; "
                       "wait for some to finish", 30, "quota_exceeded")
    if "seed" in params and params["seed"] is None:
        params["seed"] = secrets.randbelow(2**32)  # fixed now, so every attempt draws the same noise
    events = validate_request(params.get("webhook"), settings.webhook_allow_list())
    job = JobRecord(id=new_id("job"), tenant=tenant, kind=kind, params=params, max_attempts=settings.max_attempts,
                    model_profile=ctx.model_profile, webhook_events=events)
    job, created = store.create_job(job, idempotency_key)
    if created:
        try:
            ctx.dispatcher.dispatch(job.id, kind)
            store.mark_dispatched(job.id, REDISPATCH_AFTER_S)
        except Exception as exc:
            log.error("could not queue job %s: %s", job.id, exc)
            store.request_cancel(job.id)
            raise ApiError(503, "Service unavailable", "the queue cannot be reached; the job was not accepted",
                           code="queue_unavailable", headers={"Retry-After": "5"})
    return job, created


def accept(ctx, response, *, tenant: str, base_url: str, kind: str, params: dict[str, Any],
           idempotency_key: str | None) -> Job:
    """Submit and answer like every submission route: 202 + Location, or 200 for a repeated key."""
    job, created = submit(ctx, tenant=tenant, kind=kind, params=params, idempotency_key=idempotency_key)
    response.headers["Location"] = f"{base_url}/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return render(job, ctx.store, ctx.objects, base_url, ctx.settings.url_ttl_s)


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
    params, webhook = job.params, None
    if params.get("webhook"):
        hook = params["webhook"]
        params = {**params, "webhook": {**hook, "secret": "***"}}  # the secret is write-only
        webhook = {"url": hook["url"], "events": hook["events"], "deliveries": job.webhook_deliveries or {}}
    return Job(id=job.id, kind=job.kind, status=job.status, progress=min(max(job.progress, 0.0), 1.0),
               stage=job.stage, queue_position=store.queue_position(job), attempt=job.attempt,
               created_at=_ts(job.created_at), started_at=_ts(job.started_at), finished_at=_ts(job.finished_at),
               params=params, error=job.error, result=result, model_profile=job.model_profile, webhook=webhook)
