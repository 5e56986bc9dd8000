from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from service.api.deps import BaseUrl, Ctx, OwnedJob, Tenant
from service.jobs import render
from service.kinds import KINDS
from service.schemas import Job, JobPage, JobStatus
from service.schemas.common import JOB_ID
from service.store.base import StoreUnavailable

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
KindName = Literal[tuple(sorted(KINDS))]  # type: ignore[valid-type]
MAX_WAIT_S = 60
SSE_KEEPALIVE_S = 15.0
STOP_CHECK_S = 1.0  # waiting clients notice a stopping server within this


@router.get("", response_model=JobPage, summary="List this tenant's jobs, newest first")
def list_jobs(ctx: Ctx, tenant: Tenant, base: BaseUrl,
              kind: KindName | None = None,
              status: JobStatus | None = None,
              cursor: Annotated[str | None, Query(pattern=JOB_ID)] = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobPage:
    jobs, next_cursor = ctx.store.list_jobs(tenant, kind=kind, status=status.value if status else None,
                                            cursor=cursor, limit=limit)
    return JobPage(items=[render(j, ctx.store, ctx.objects, base, ctx.settings.url_ttl_s) for j in jobs],
                   next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job, summary="A job; `wait` long-polls until it is final")
def get_job(job: OwnedJob, ctx: Ctx, base: BaseUrl,
            wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for a final state.")] = 0) -> Job:
    deadline = time.monotonic() + wait
    # in slices, so a stopping server answers with the current state at once
    while not job.final and not ctx.stopping.is_set() and (remaining := deadline - time.monotonic()) > 0:
        job = ctx.store.wait_for_change(job.id, job.version, min(remaining, STOP_CHECK_S)) or job
    return render(job, ctx.store, ctx.objects, base, ctx.settings.url_ttl_s)


@router.post("/{job_id}/cancel", response_model=Job,
             summary="Cancel: queued jobs at once, running ones within one step; final jobs are returned unchanged")
def cancel_job(job: OwnedJob, ctx: Ctx, base: BaseUrl) -> Job:
    job = ctx.store.request_cancel(job.id) or job
    return render(job, ctx.store, ctx.objects, base, ctx.settings.url_ttl_s)


@router.get("/{job_id}/events", summary="Server-sent events of the job's state until it is final",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "`event: job` frames whose data is the Job JSON; ends after a final state."}})
def job_events(job: OwnedJob, ctx: Ctx, base: BaseUrl,
               last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    sent = int(last_event_id) if last_event_id and last_event_id.isdigit() else -1

    def frames():
        nonlocal job, sent
        quiet_since = time.monotonic()
        while True:
            if job.version > sent:
                body = render(job, ctx.store, ctx.objects, base, ctx.settings.url_ttl_s).model_dump_json()
                yield f"id: {job.version}\nevent: job\ndata: {body}\n\n"
                sent, quiet_since = job.version, time.monotonic()
            if job.final:
                return
            if ctx.stopping.is_set():  # end cleanly; the client reconnects with Last-Event-ID
                yield "retry: 1000\n\n"
                return
            changed = ctx.store.wait_for_change(job.id, sent, STOP_CHECK_S)
            if changed is None:  # expired by retention while streaming
                yield f"event: gone\ndata: {json.dumps({'id': job.id})}\n\n"
                return
            if changed.version <= sent and time.monotonic() - quiet_since >= SSE_KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            job = changed

    def frames_or_retry():
        try:
            yield from frames()
        except StoreUnavailable:  # the store went away mid-stream: end cleanly, the client reconnects
            yield "retry: 5000\n\n"

    return StreamingResponse(frames_or_retry(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
