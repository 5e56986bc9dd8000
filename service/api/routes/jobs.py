from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import BaseUrl, Ctx, OwnedJob, Tenant
from service.api.streaming import EventStreamResponse, client_gone
from service.core.errors import ApiError
from service.jobs import job_response, page_response, render_json
from service.kinds import KINDS
from service.schemas import Job, JobPage, JobStatus
from service.schemas.common import JOB_ID
from service.store.base import JobRecord, StoreUnavailable
from service.waiters import TooManyWaiters

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
KindName = Literal[tuple(sorted(KINDS))]  # type: ignore[valid-type]
MAX_WAIT_S = 60
SSE_KEEPALIVE_S = 15.0


def too_many_waiters(exc: TooManyWaiters) -> ApiError:
    return ApiError(429, "Too many requests",
                    f"this key already has {exc.limit} open long-polls and event streams on this server "
                    "(VISIONJOBS_MAX_WAITERS_PER_KEY); close some or poll without `wait`",
                    code="too_many_waiters", headers={"Retry-After": "5"},
                    errors=[{"field": "wait", "message": "too many concurrent waits for this key", "limit": exc.limit}])


@router.get("", response_model=JobPage, summary="List this tenant's jobs, newest first",
            description="Bulky params (long arrays such as strokes and points, long strings) are elided in list "
                        "items as `{\"elided\": ...}`; GET /v1/jobs/{id} has the full job.")
async def list_jobs(ctx: Ctx, tenant: Tenant, base: BaseUrl,
                    kind: KindName | None = None,
                    status: JobStatus | None = None,
                    cursor: Annotated[str | None, Query(pattern=JOB_ID)] = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20):
    jobs, next_cursor = await ctx.astore.list_jobs(tenant, kind=kind, status=status.value if status else None,
                                                   cursor=cursor, limit=limit)
    return await page_response(ctx, jobs, next_cursor, base)


async def wait_final(ctx, request: Request, tenant: str, job: JobRecord, wait: float) -> JobRecord:
    """Sleep on the hub (no thread, no connection) until the job is final, the time is up, the
    client hangs up or the server stops; returns the latest state read."""
    try:
        waiter = ctx.hub.watch(tenant, job.id, job.version, final_only=True)
    except TooManyWaiters as exc:
        raise too_many_waiters(exc)
    deadline = time.monotonic() + wait
    with waiter:
        async with client_gone(request, waiter):
            while not job.final and (remaining := deadline - time.monotonic()) > 0:
                reason = await waiter.wait(remaining)
                if reason != "changed":  # timeout, gone, stopping
                    break
                job = await ctx.astore.get_job(job.id) or job
                waiter.seen(job.version)
    return job


@router.get("/{job_id}", response_model=Job, summary="A job; `wait` long-polls until it is final")
async def get_job(job: OwnedJob, request: Request, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                  wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S,
                                               description="Seconds to wait for a final state.")] = 0):
    if wait > 0 and not job.final and not ctx.stopping.is_set():
        job = await wait_final(ctx, request, tenant, job, wait)
    return await job_response(ctx, job, base)


@router.post("/{job_id}/cancel", response_model=Job,
             summary="Cancel: queued jobs at once, running ones within one step; final jobs are returned unchanged")
async def cancel_job(job: OwnedJob, ctx: Ctx, base: BaseUrl):
    job = await ctx.astore.request_cancel(job.id) or job
    return await job_response(ctx, job, base)


@router.get("/{job_id}/events", summary="Server-sent events of the job's state until it is final",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "`event: job` frames whose data is the Job JSON; ends after a final state."}})
async def job_events(job: OwnedJob, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                     last_event_id: Annotated[str | None, Header()] = None) -> EventStreamResponse:
    sent = int(last_event_id) if last_event_id and last_event_id.isdigit() else -1
    try:
        waiter = ctx.hub.watch(tenant, job.id, job.version)
    except TooManyWaiters as exc:
        raise too_many_waiters(exc)

    async def frames():
        nonlocal job, sent
        with waiter:
            while True:
                if job.version > sent:
                    body = await render_json(ctx, job, base)
                    yield f"id: {job.version}\nevent: job\ndata: {body}\n\n"
                    sent = job.version
                if job.final:
                    return
                reason = await waiter.wait(SSE_KEEPALIVE_S)
                if reason == "stopping":  # end cleanly; the client reconnects with Last-Event-ID
                    yield "retry: 1000\n\n"
                    return
                if reason == "gone":
                    return
                if reason == "timeout":
                    yield ": keep-alive\n\n"
                    continue
                changed = await ctx.astore.get_job(job.id)
                if changed is None:  # expired by retention while streaming
                    yield f"event: gone\ndata: {json.dumps({'id': job.id})}\n\n"
                    return
                job = changed
                waiter.seen(job.version)

    async def frames_or_retry():
        try:
            async for frame in frames():
                yield frame
        except StoreUnavailable:  # the store went away mid-stream: end cleanly, the client reconnects
            yield "retry: 5000\n\n"

    return EventStreamResponse(frames_or_retry(), on_close=waiter.close,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
