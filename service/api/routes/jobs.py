from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from service.api.deps import BEARER, authenticate, find_job
from service.api.streaming import EventStreamResponse, client_gone
from service.core.errors import ApiError
from service.jobs import job_response, page_response, render_json
from service.kinds import KINDS
from service.schemas import Job, JobLogs, JobPage, JobStatus
from service.schemas.common import JOB_ID
from service.store.base import JobRecord, StoreUnavailable
from service.waiters import TooManyWaiters

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
KindName = Literal[tuple(sorted(KINDS))]  # type: ignore[valid-type]
MAX_WAIT_S = 60
SSE_KEEPALIVE_S = 15.0


class SharedReads:
    """Waiters woken by the same change share one read and one render of the job: a thousand
    long-polls on one job cost one store read when it finishes, not a thousand. Nothing is
    cached: a call that finds no read in flight starts its own. The read runs in a task of its
    own, so a client that hangs up (its request cancelled) takes nothing from the others."""

    def __init__(self):
        self._inflight: dict[tuple[str, str], asyncio.Task] = {}

    async def get(self, ctx, job_id: str, base: str) -> tuple[JobRecord | None, str | None]:
        key = (job_id, base)
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.ensure_future(self._read(ctx, job_id, base))
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    @staticmethod
    async def _read(ctx, job_id: str, base: str) -> tuple[JobRecord | None, str | None]:
        job = await ctx.astore.read_job(job_id)
        return job, (await render_json(ctx, job, base) if job is not None else None)


shared = SharedReads()
_EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit() takes "²" and "١"), below 2^63


def event_id(header: str | None) -> int:
    """The Last-Event-ID a client sent, or -1 (start over) for anything that is not one of ours."""
    return int(header) if header and _EVENT_ID.fullmatch(header) else -1


def too_many_waiters(exc: TooManyWaiters) -> ApiError:
    return ApiError(429, "Too many requests",
                    f"this key already has {exc.limit} open long-polls and event streams on this server "
                    "(VISIONJOBS_MAX_WAITERS_PER_KEY); close some or poll without `wait`",
                    code="too_many_waiters", headers={"Retry-After": "5"},
                    errors=[{"field": "wait", "message": "too many concurrent waits for this key", "limit": exc.limit}])


@router.get("", response_model=JobPage, summary="List this tenant's jobs, newest first", openapi_extra=BEARER,
            description="Bulky params (long arrays such as strokes and points, long strings) are elided in list "
                        "items as `{\"elided\": ...}`; GET /v1/jobs/{id} has the full job.")
async def list_jobs(request: Request,
                    kind: KindName | None = None,
                    status: JobStatus | None = None,
                    cursor: Annotated[str | None, Query(pattern=JOB_ID)] = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20):
    ctx, tenant, base = await authenticate(request)
    jobs, next_cursor = await ctx.astore.list_jobs(tenant, kind=kind, status=status.value if status else None,
                                                   cursor=cursor, limit=limit)
    return await page_response(ctx, jobs, next_cursor, base)


async def wait_final(ctx, request: Request, tenant: str, job: JobRecord, wait: float,
                     base: str) -> tuple[JobRecord, str | None]:
    """Sleep on the hub (no thread, no connection) until the job is final, the time is up, the
    client hangs up or the server stops; returns the latest state read (and its rendering when
    a shared read made one)."""
    try:
        waiter = ctx.hub.watch(tenant, job.id, job.version, final_only=True)
    except TooManyWaiters as exc:
        raise too_many_waiters(exc)
    deadline, body = time.monotonic() + wait, None
    with waiter:
        async with client_gone(request, waiter):
            while not job.final and (remaining := deadline - time.monotonic()) > 0:
                reason = await waiter.wait(remaining)
                if reason == "unavailable":
                    raise StoreUnavailable("the job store went away during the wait")
                if reason != "changed":  # timeout, gone, stopping
                    break
                latest, latest_body = await shared.get(ctx, job.id, base)
                if latest is None:  # expired meanwhile: answer with the last state seen
                    break
                job, body = latest, latest_body
                waiter.seen(job.version)
    return job, body


@router.get("/{job_id}", response_model=Job, summary="A job; `wait` long-polls until it is final",
            openapi_extra=BEARER)
async def get_job(job_id: str, request: Request,
                  wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S,
                                               description="Seconds to wait for a final state.")] = 0):
    ctx, tenant, base = await authenticate(request)
    job = await find_job(ctx, tenant, job_id)
    if wait > 0 and not job.final and not ctx.stopping.is_set():
        job, body = await wait_final(ctx, request, tenant, job, wait, base)
        if body is not None and job.final:
            return Response(body, media_type="application/json")
    return await job_response(ctx, job, base)


@router.post("/{job_id}/cancel", response_model=Job, openapi_extra=BEARER,
             summary="Cancel: queued jobs at once, running ones within one step; final jobs are returned unchanged")
async def cancel_job(job_id: str, request: Request):
    ctx, tenant, base = await authenticate(request)
    job = await find_job(ctx, tenant, job_id)
    job = await ctx.astore.request_cancel(job.id) or job
    return await job_response(ctx, job, base)


def log_lines(job: JobRecord) -> tuple[int, list[str]]:
    """(index of the first kept line, the kept lines) of a job's log."""
    logs = job.logs or {}
    lines = list(logs.get("lines") or [])
    return int(logs.get("total", len(lines))) - len(lines), lines


@router.get("/{job_id}/logs", response_model=JobLogs, openapi_extra=BEARER,
            summary="The job's log: stage changes, warnings, a failure's traceback summary")
async def job_logs(job_id: str, request: Request):
    ctx, tenant, _ = await authenticate(request)
    job = await find_job(ctx, tenant, job_id)
    first, lines = log_lines(job)
    return JobLogs(job_id=job.id, total=first + len(lines), dropped=first, lines=lines)


def log_frames(job: JobRecord, sent: int) -> tuple[list[str], int]:
    """`event: log` frames for the lines of `job`'s log from index `sent` on; the next `sent`."""
    first, lines = log_lines(job)
    frames = [f"event: log\ndata: {json.dumps({'index': first + i, 'line': line})}\n\n"
              for i, line in enumerate(lines) if first + i >= sent]
    return frames, max(sent, first + len(lines))


@router.get("/{job_id}/events", summary="Server-sent events of the job's state until it is final",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "`event: job` frames whose data is the Job JSON; `event: log` frames "
                                            "(`{\"index\", \"line\"}`) for each new line of the job's log, before "
                                            "the job frame of the same change (on a reconnect with Last-Event-ID, "
                                            "only lines written after it); ends after a final state."}},
            openapi_extra=BEARER)
async def job_events(job_id: str, request: Request,
                     last_event_id: Annotated[str | None, Header()] = None) -> EventStreamResponse:
    ctx, tenant, base = await authenticate(request)
    job = await find_job(ctx, tenant, job_id)
    sent = event_id(last_event_id)
    logs_sent = log_lines(job)[0] + len(log_lines(job)[1]) if sent >= 0 else 0
    try:
        waiter = ctx.hub.watch(tenant, job.id, job.version)
    except TooManyWaiters as exc:
        raise too_many_waiters(exc)

    async def frames():
        nonlocal job, sent, logs_sent
        body = None
        with waiter:
            while True:
                logs, logs_sent = log_frames(job, logs_sent)
                for frame in logs:
                    yield frame
                if job.version > sent:
                    body = body or await render_json(ctx, job, base)
                    yield f"id: {job.version}\nevent: job\ndata: {body}\n\n"
                    sent, body = job.version, None
                if job.final:
                    return
                reason = await waiter.wait(SSE_KEEPALIVE_S)
                if reason == "stopping":  # end cleanly; the client reconnects with Last-Event-ID
                    yield "retry: 1000\n\n"
                    return
                if reason == "gone":
                    return
                if reason == "unavailable":  # ends like a failed read: the client reconnects
                    raise StoreUnavailable("the job store went away during the stream")
                if reason == "timeout":
                    yield ": keep-alive\n\n"
                    continue
                changed, body = await shared.get(ctx, job.id, base)  # one read per change for all its streams
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
