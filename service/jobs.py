"""Submitting jobs and rendering them for clients (URLs signed afresh on every read)."""
from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from fastapi import Response

from service import quotas
from service.core.errors import ApiError, field_error
from service.kinds import KINDS
from service.limits import too_many
from service.webhooks import validate_request
from service.schemas import Job, JobPage
from service.storage.base import ObjectStore
from service.store.base import QUEUED, IdempotencyMismatch, JobRecord, JobStore, new_id, wire_bytes

log = logging.getLogger("visionjobs.jobs")
# A queued job whose message was never sent (broker down at the wrong moment) is sent again by
# the reaper after this long; a duplicate message is harmless (the claim is atomic).
REDISPATCH_AFTER_S = 300.0
PARAMS_SLACK_S = 86400  # a job's params are kept until retention ends after it finishes: a day for queue and run
RENDER_INLINE_BYTES = 64 * 1024  # jobs (or pages) stored in more than this are rendered off the loop


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


NO_WORKER_RETRY_S = 30  # workers report every 30 s (worker/capabilities.py)


async def live_workers(astore, kind: str) -> tuple[list[dict], list[dict]]:
    """(reports of live workers serving `kind`, those of them ready to run it)."""
    caps = await astore.get_capabilities(kind)
    return caps, [c for c in caps if c.get("ready", True)]


async def check_workers(ctx, kind: str, params: dict[str, Any]) -> None:
    """Refuse at once what no live worker can run, from the workers' reports: 503 + Retry-After
    when none serves the kind, 422 naming the missing files when none has its weights or the
    optional feature a parameter asks for (`JobKind.wants`)."""
    if not ctx.settings.refuse_unserved:
        return
    caps, ready = await live_workers(ctx.astore, kind)
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


def fingerprint(kind: str, params: dict[str, Any]) -> str:
    """What an Idempotency-Key is bound to: the route (its job kind) and the body as validated."""
    canonical = json.dumps({"kind": kind, "params": params}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_reused(exc: IdempotencyMismatch) -> ApiError:
    # the IETF Idempotency-Key draft: a key reused with another payload is 422
    return ApiError(422, "Idempotency key reused", "this Idempotency-Key was used for a different request (another "
                    "route or body); use a new key for a new request", code="idempotency_key_reused",
                    errors=[{"field": "Idempotency-Key", "message": "already used for a different request"}])


async def submit(ctx, *, tenant: str, kind: str, params: dict[str, Any], idempotency_key: str | None,
                 admit: Callable[[], Awaitable[None]] | None = None,
                 sent: dict[str, Any] | None = None) -> tuple[JobRecord, bool]:
    """Create the job (or find the one this Idempotency-Key made) and hand it to the workers.

    A repeated key is answered before any quota or admission check (`admit`: the route's own
    quotas): the retry of a request that was accepted gets its job, whatever the tenant's load now.
    `sent`: the request before its URL inputs became uploads (a retry fetches them into new ones)."""
    store = ctx.astore
    bound = fingerprint(kind, params if sent is None else sent)  # before the seed is drawn: the client's request
    try:
        if idempotency_key and (existing := await store.find_idempotent(tenant, idempotency_key, bound)):
            return existing, False
        if admit is not None:
            await admit()
        job, created = await _create(ctx, tenant, kind, params, idempotency_key, bound)
    except IdempotencyMismatch as exc:
        raise key_reused(exc) from None
    if created:
        await _dispatch(ctx, job, idempotency_key)
    return job, created


async def _create(ctx, tenant: str, kind: str, params: dict[str, Any], idempotency_key: str | None,
                  bound: str) -> tuple[JobRecord, bool]:
    store, settings = ctx.astore, ctx.settings
    await check_workers(ctx, kind, params)
    if settings.max_active_jobs and await store.active_jobs(tenant) >= settings.max_active_jobs:
        raise too_many(f"this key has {settings.max_active_jobs} queued or running jobs, the limit; "
                       "wait for some to finish", 30, "quota_exceeded")
    if "seed" in params and params["seed"] is None:
        params["seed"] = secrets.randbelow(2**32)  # fixed now, so every attempt draws the same noise
    events = None
    if params.get("webhook"):  # resolves the target's host name: blocking, so off the loop
        events = await ctx.offload("dns", validate_request, params["webhook"], settings.webhook_allow_list())
    job = JobRecord(id=new_id("job"), tenant=tenant, kind=kind, params=params, max_attempts=settings.max_attempts,
                    model_profile=ctx.model_profile, webhook_events=events)
    # the params stay in the store until retention ends (a canceled job too): counted for that long
    size = len(json.dumps(params, default=str))
    await quotas.charge(ctx, tenant, quotas.PARAMS, job.id, size, settings.retention_s + PARAMS_SLACK_S, "body")
    try:
        made, created = await store.create_job(job, idempotency_key, bound)
    except BaseException:
        await store.release_bytes(tenant, quotas.PARAMS, job.id)
        raise
    if not created:  # a concurrent request with this key made the job first
        await store.release_bytes(tenant, quotas.PARAMS, job.id)
    return made, created


async def _dispatch(ctx, job: JobRecord, idempotency_key: str | None) -> None:
    """Send the queue message. When it cannot be sent, the job is removed with its Idempotency-Key
    (a retry with the same key creates it afresh, never finds a canceled one); a job a worker
    already claimed (the message went out after all) stays accepted."""
    try:
        if getattr(ctx.dispatcher, "blocking", True):
            await ctx.offload("queue", ctx.dispatcher.dispatch, job.id, job.kind)
        else:
            ctx.dispatcher.dispatch(job.id, job.kind)
    except Exception as exc:
        log.error("could not queue job %s: %s", job.id, exc)
        if await ctx.astore.discard_job(job.id):
            await ctx.astore.release_bytes(job.tenant, quotas.PARAMS, job.id)
            raise ApiError(503, "Service unavailable", "the queue cannot be reached; the job was not created "
                           "(retry, with the same Idempotency-Key if you sent one)",
                           code="queue_unavailable", headers={"Retry-After": "5"}) from None
        return
    if not await ctx.astore.mark_accepted(job.id, REDISPATCH_AFTER_S):
        # on the primary only: a failover now would lose it, so it is not accepted
        await ctx.astore.withdraw(job.id, job.tenant, idempotency_key)
        await ctx.astore.release_bytes(job.tenant, quotas.PARAMS, job.id)
        raise ApiError(503, "Service unavailable", f"the job did not reach a replica of the job store within "
                       f"{ctx.settings.redis_wait_timeout_ms} ms; it was not accepted", code="not_replicated",
                       headers={"Retry-After": "2"})


async def accept(ctx, *, tenant: str, base_url: str, kind: str, params: dict[str, Any],
                 idempotency_key: str | None, admit: Callable[[], Awaitable[None]] | None = None,
                 sent: dict[str, Any] | None = None) -> Response:
    """Submit and answer like every submission route: 202 + Location, or 200 for a repeated key."""
    job, created = await submit(ctx, tenant=tenant, kind=kind, params=params, idempotency_key=idempotency_key,
                                admit=admit, sent=sent)
    return await job_response(ctx, job, base_url, status_code=202 if created else 200,
                              headers={"Location": f"{base_url}/v1/jobs/{job.id}"})


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


def build_job(job: JobRecord, queue_position: int | None, objects: ObjectStore, base_url: str, ttl_s: int) -> Job:
    result = _sign_files(job.result, objects, job.tenant, base_url, ttl_s) if job.result else None
    params, webhook = job.params, None
    if params.get("webhook"):
        hook = params["webhook"]
        params = {**params, "webhook": {**hook, "secret": "***"}}  # the secret is write-only
        webhook = {"url": hook["url"], "events": hook["events"], "deliveries": job.webhook_deliveries or {}}
    return Job(id=job.id, kind=job.kind, status=job.status, progress=min(max(job.progress, 0.0), 1.0),
               stage=job.stage, queue_position=queue_position, attempt=job.attempt,
               created_at=_ts(job.created_at), started_at=_ts(job.started_at), finished_at=_ts(job.finished_at),
               params=params, error=job.error, result=result, model_profile=job.model_profile, webhook=webhook,
               weights_fingerprint=job.weights_fingerprint, metrics=job.metrics)


def render(job: JobRecord, store: JobStore, objects: ObjectStore, base_url: str, ttl_s: int) -> Job:
    """For sync callers (the webhook deliverer)."""
    return build_job(job, store.queue_position(job), objects, base_url, ttl_s)


def _offloaded(ctx, jobs: list[JobRecord]) -> bool:
    """Render off the loop: big jobs, and presigning that may block (S3 credentials refresh)."""
    if sum(wire_bytes(j) for j in jobs) > RENDER_INLINE_BYTES:
        return True
    return getattr(ctx.objects, "sign_may_block", False) and any(j.result for j in jobs)


async def render_json(ctx, job: JobRecord, base_url: str) -> bytes:
    """The Job as JSON bytes (queue position from the async store; big jobs built off the loop)."""
    position = await ctx.astore.queue_position(job) if job.status == QUEUED else None
    build = lambda: build_job(job, position, ctx.objects, base_url, ctx.settings.url_ttl_s).model_dump_json()  # noqa: E731
    return await ctx.offload("cpu", build) if _offloaded(ctx, [job]) else build()


async def job_response(ctx, job: JobRecord, base_url: str, status_code: int = 200,
                       headers: dict[str, str] | None = None) -> Response:
    # serialised once here; returning a Response skips FastAPI's second validation of the model
    return Response(await render_json(ctx, job, base_url), status_code=status_code, media_type="application/json",
                    headers=headers)


async def page_response(ctx, jobs: list[JobRecord], next_cursor: str | None, base_url: str) -> Response:
    positions = await ctx.astore.queue_positions(jobs) if any(j.status == QUEUED for j in jobs) else [None] * len(jobs)
    ttl = ctx.settings.url_ttl_s

    def build() -> bytes:
        items = [build_job(j, p, ctx.objects, base_url, ttl) for j, p in zip(jobs, positions)]
        return JobPage(items=items, next_cursor=next_cursor).model_dump_json().encode()

    body = await ctx.offload("cpu", build) if _offloaded(ctx, jobs) else build()
    return Response(body, media_type="application/json")
