"""The FastAPI application factory (the HTTP edge: no torch, no worker code)."""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from service.api.deps import AppContext
from service.api.routes import (
    anomaly, colorizations, console, files, health, jobs, subject_generations, subject_models, uploads, videos,
)
from service.core.config import Settings, get_settings
from service.api.openapi_doc import install as install_openapi
from service.core.errors import install_handlers
from service.core.security import KeyRing
from service.dispatch import CeleryDispatcher, Dispatcher, LocalDispatcher
from service.jobs import render
from service.limits import BodyLimitMiddleware, RateLimiter
from service.metrics import build_registry
from service.webhooks import WebhookDeliverer
from service.reaper import Reaper
from service.storage import build_object_store
from service.store import build_job_store

log = logging.getLogger("visionjobs.api")
API_VERSION = "1.0.0"
# Long-polls and SSE streams each hold a worker thread while they wait.
THREADPOOL_TOKENS = 512


def build_context(settings: Settings, *, anonymous: bool = False, dispatcher: Dispatcher | None = None,
                  model_profile: str | None = None) -> AppContext:
    store = build_job_store(settings)
    objects = build_object_store(settings)
    if dispatcher is None:
        dispatcher = CeleryDispatcher(settings.redis_url) if settings.redis_url else LocalDispatcher()
    keyring = KeyRing(settings.key_map(), allow_anonymous=anonymous or settings.allow_anonymous)
    limiter = RateLimiter(settings.rate_limit_per_minute, getattr(store, "r", None))
    return AppContext(settings, store, objects, dispatcher, keyring, limiter, model_profile)


def render_for_webhook(ctx: AppContext, job):
    base = (ctx.settings.public_url or "").rstrip("/")  # local-store URLs need VISIONJOBS_PUBLIC_URL to be absolute
    return render(job, ctx.store, ctx.objects, base, ctx.settings.url_ttl_s)


def stop_on_signals(stopping: threading.Event) -> None:
    """Set `stopping` on SIGTERM/SIGINT, then let the server's own handler run. Uvicorn's graceful
    shutdown waits for every open response: long-polls and SSE streams watch this flag and end
    at once, so a stop never waits for the jobs they follow."""
    if threading.current_thread() is not threading.main_thread():
        return  # (TestClient runs the lifespan in a helper thread: no signals there)
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            stopping.set()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


def create_app(ctx: AppContext | None = None, *, run_reaper: bool = True) -> FastAPI:
    """`ctx` None: built from the environment at start-up (so `visionjobs openapi` touches nothing)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal ctx
        ctx = ctx or build_context(get_settings())
        app.state.ctx = ctx
        stop_on_signals(ctx.stopping)
        app.state.registry = build_registry(ctx.store)
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADPOOL_TOKENS
        reaper = Reaper(ctx.store, ctx.dispatcher, ctx.settings.reaper_interval_s,
                        ctx.settings.lease_s) if run_reaper else None
        if reaper:
            reaper.start()
        deliverer = WebhookDeliverer(ctx, render_for_webhook)
        deliverer.start()
        if ctx.keyring.anonymous:
            log.warning("no API keys configured: serving one anonymous tenant, no authentication")
        yield
        deliverer.stop()
        if reaper:
            reaper.stop()

    app = FastAPI(title="visionjobs", version=API_VERSION, lifespan=lifespan,
                  description="GPU inference jobs for vision diffusion methods: submit, poll or stream, cancel, download.")
    install_handlers(app)
    install_openapi(app)
    limits = ctx.settings if ctx else get_settings()
    app.add_middleware(BodyLimitMiddleware, json_limit=limits.max_body_bytes, upload_limit=limits.max_upload_bytes)
    for module in (uploads, colorizations, videos, anomaly, subject_generations, subject_models, jobs, files, health,
                   console):
        app.include_router(module.router)
    return app
