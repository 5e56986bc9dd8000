from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from service.api.deps import Ctx
from service.core.errors import ApiError
from service.jobs import live_workers
from service.kinds import KINDS
from service.metrics import render_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Job store and object storage reachable; live workers per kind")
def readyz(ctx: Ctx) -> dict:
    """`kinds`: per job kind, the live workers serving it and how many of them can run it
    (its weights present); the API itself is ready without them."""
    checks = {}
    for name, target in (("store", ctx.store), ("storage", ctx.objects)):
        try:
            target.ping()
            checks[name] = "ok"
        except Exception as exc:
            raise ApiError(503, "Not ready", f"{name}: {exc}", code="not_ready", headers={"Retry-After": "5"})
    kinds = {}
    for kind in KINDS:
        caps, ready = live_workers(ctx.store, kind)
        kinds[kind] = {"workers": len(caps), "ready": len(ready)}
    return {"status": "ready", "checks": checks, "kinds": kinds}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(render_metrics(request.app.state.registry),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
