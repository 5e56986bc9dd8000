"""The FastAPI application factory (the HTTP edge: no torch, no worker code)."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api.deps import AppContext
from service.api.routes import (
    anomaly, colorizations, console, files, health, jobs, kinds, subject_generations, subject_models, uploads,
    video_models, videos,
)
from service.core.config import Settings, get_settings
from service.api.docs import install_docs
from service.api.openapi_doc import install as install_openapi
from service.core.errors import install_handlers
from service.core.security import KeyRing
from service.dispatch import CeleryDispatcher, Dispatcher, LocalDispatcher
from service.jobs import render
from service.limits import BodyLimitMiddleware, RateLimiter
from service.metrics import build_registry, instrument
from service.offload import Offload
from service.webhooks import WebhookDeliverer
from service.reaper import Reaper
from service.retention import Purger
from service.storage import build_object_store
from service.store import build_job_store
from service.waiters import ChangeHub

log = logging.getLogger("visionjobs.api")
API_VERSION = "1.0.0"
# Thousands of held long-polls and streams are ~160 long-lived objects each, and a full (gen 2)
# collection scans them all: 1-2.6 s with 12,000 waiters (bench/waiters.py), the whole loop
# stopped. Young collections stay as they are; a full one waits for 1000 young ones, not 10.
GC_THRESHOLDS = (700, 10, 1000)


def build_context(settings: Settings, *, anonymous: bool = False, dispatcher: Dispatcher | None = None,
                  model_profile: str | None = None) -> AppContext:
    store = build_job_store(settings)
    objects = build_object_store(settings)
    if dispatcher is None:
        dispatcher = CeleryDispatcher(settings.redis_target()) if settings.distributed else LocalDispatcher()
    keyring = KeyRing(settings.key_map(), allow_anonymous=anonymous or settings.allow_anonymous)
    limiter = RateLimiter(settings.rate_limit_per_minute)  # bound to the async Redis client at start-up
    return AppContext(settings, store, objects, dispatcher, keyring, limiter, model_profile)


def render_for_webhook(ctx: AppContext, job):
    base = (ctx.settings.public_url or "").rstrip("/")  # local-store URLs need VISIONJOBS_PUBLIC_URL to be absolute
    return render(job, ctx.store, ctx.objects, base, ctx.settings.url_ttl_s)


def stop_on_signals(stopping: threading.Event, on_stop=None) -> None:
    """Set `stopping` (and call `on_stop`) on SIGTERM/SIGINT, then let the server's own handler
    run. Uvicorn's graceful shutdown waits for every open response: `on_stop` wakes every
    long-poll and SSE stream, which then end at once, so a stop never waits for the jobs they follow."""
    if threading.current_thread() is not threading.main_thread():
        return  # (TestClient runs the lifespan in a helper thread: no signals there)
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            stopping.set()
            if on_stop is not None:
                on_stop()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


async def open_request_path(ctx: AppContext) -> list[asyncio.Task]:
    """The async side of the API process, inside its event loop: the async store with its own
    pool, the change hub and its one listener, the bounded pools, the rate limiter's client."""
    ctx.offload = Offload()
    ctx.astore = ctx.store.open_async(pool_size=ctx.settings.redis_pool_size, cpu=ctx.offload.executor("cpu"))
    ctx.hub = ChangeHub(ctx.astore.versions, max_per_tenant=ctx.settings.max_waiters_per_key,
                        recheck_s=ctx.astore.recheck_s)
    ctx.limiter.bind(ctx.astore.redis, ctx.astore.prefix)
    return [asyncio.create_task(ctx.astore.listen(ctx.hub), name="change-listener"),
            asyncio.create_task(ctx.hub.run(), name="waiter-recheck")]


async def close_request_path(ctx: AppContext, tasks: list[asyncio.Task]) -> None:
    ctx.hub.shutdown()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=3)  # the listener ends within a second of the hub's shutdown
    await ctx.astore.aclose()
    ctx.offload.shutdown()


def create_app(ctx: AppContext | None = None, *, run_reaper: bool = True) -> FastAPI:
    """`ctx` None: built from the environment at start-up (so `visionjobs openapi` touches nothing)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal ctx
        ctx = ctx or build_context(get_settings())
        app.state.ctx = ctx
        gc.set_threshold(*GC_THRESHOLDS)
        ctx.stopping.clear()
        tasks = await open_request_path(ctx)
        loop = asyncio.get_running_loop()
        stop_on_signals(ctx.stopping, lambda: loop.call_soon_threadsafe(ctx.hub.shutdown))
        app.state.registry = build_registry(ctx.store, ctx.hub)
        reaper = Reaper(ctx.store, ctx.dispatcher, ctx.settings.reaper_interval_s,
                        ctx.settings.lease_s) if run_reaper else None
        purger = Purger(ctx.store, ctx.objects, ctx.settings.purge_interval_s,
                        ctx.settings.artifact_idle_s) if run_reaper else None
        if reaper:
            reaper.start()
            purger.start()
        deliverer = WebhookDeliverer(ctx, render_for_webhook)
        deliverer.start()
        if ctx.keyring.anonymous:
            log.warning("no API keys configured: serving one anonymous tenant, no authentication")
        yield
        deliverer.stop()
        if reaper:
            reaper.stop()
            purger.stop()
        await close_request_path(ctx, tasks)

    app = FastAPI(title="visionjobs", version=API_VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="GPU inference jobs for vision diffusion methods: submit, poll or stream, cancel, download.")
    install_handlers(app)
    install_openapi(app)
    install_docs(app)  # /docs with its assets served here: works offline
    app.state.http_registry = instrument(app)
    limits = ctx.settings if ctx else get_settings()
    app.add_middleware(BodyLimitMiddleware, json_limit=limits.max_body_bytes, upload_limit=limits.max_upload_bytes)
    if limits.cors_origin_list():  # opt-in: browsers on these origins may call the API
        app.add_middleware(CORSMiddleware, allow_origins=limits.cors_origin_list(), allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
                           expose_headers=["Location", "Retry-After"], max_age=600)
    # the status-read routes first: a request walks the route table in order
    for module in (jobs, health, uploads, colorizations, videos, video_models, anomaly, subject_generations,
                   subject_models, kinds, files, console):
        app.include_router(module.router)
    return app
