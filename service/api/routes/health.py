from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse

from service.api.deps import Ctx
from service.core.errors import ApiError
from service.jobs import live_workers
from service.kinds import KINDS
from service.metrics import render_metrics

router = APIRouter(tags=["health"])
log = logging.getLogger("visionjobs.api")
READY_TIMEOUT_S = 5.0  # a stalled dependency makes /readyz answer 503, not hang


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """A browser opening the service's address lands on the web console."""
    return RedirectResponse("/console", status_code=307)


@router.get("/healthz", summary="Alive")
async def healthz() -> dict:
    """No dependency, no store, no thread: answers while the loop runs, whatever else is busy."""
    return {"status": "ok"}


@router.get("/readyz", summary="Job store accepts writes, object storage reachable; live workers per kind")
async def readyz(ctx: Ctx) -> dict:
    """`kinds`: per job kind, the live workers serving it and how many of them can run it
    (its weights present); the API itself is ready without them. A failed check answers a fixed
    message; what failed (hosts, ports, paths) goes to the log only."""
    checks = {}
    probes = (("store", ctx.astore.ping, "not reachable"), ("store_writes", ctx.astore.check_writable, "refuses writes"),
              ("storage", lambda: ctx.offload("storage", ctx.objects.ping), "not reachable"))
    for name, probe, failed in probes:
        try:
            await asyncio.wait_for(probe(), READY_TIMEOUT_S)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("readiness check %s failed: %s", name, exc or f"no answer within {READY_TIMEOUT_S:g} s")
            raise ApiError(503, "Not ready", f"{name}: {failed}", code="not_ready", headers={"Retry-After": "5"},
                           errors=[{"field": name, "message": failed}]) from None
    kinds = {}
    for kind in KINDS:
        caps, ready = await live_workers(ctx.astore, kind)
        kinds[kind] = {"workers": len(caps), "ready": len(ready)}
    return {"status": "ready", "checks": checks, "kinds": kinds}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(request: Request, ctx: Ctx) -> PlainTextResponse:
    # the collectors read the store with the sync client: in a pool thread, never on the loop
    body = await ctx.offload("cpu", render_metrics, request.app.state.registry,
                             getattr(request.app.state, "http_registry", None))
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")
