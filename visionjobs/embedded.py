"""`visionjobs run`: the whole service in one process with no other server.

SQLite job store and local object store under --data-dir, the API, and one worker thread
that takes queued jobs from the store. Model profile `auto` unless set.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("visionjobs")


def run_embedded(host: str, port: int, data_dir: Path) -> None:
    import uvicorn

    from service.app import build_context, create_app
    from service.kinds import KINDS
    from worker.config import WorkerSettings
    from worker.capabilities import report, start_reporting
    from worker.process import poll_loop
    from worker.runner import Runner

    overrides = {"data_dir": data_dir, "redis_url": None, "redis_sentinels": "", "s3_bucket": None}
    if "VISIONJOBS_MODEL_PROFILE" not in os.environ:
        overrides["model_profile"] = "auto"
    settings = WorkerSettings(**overrides)
    ctx = build_context(settings, anonymous=True)
    runner = Runner(settings, ctx.store, ctx.objects, name="embedded")
    # resolves `auto` once per kind, warning loudly for each kind that falls back to tiny;
    # every finished job reports the profile that actually ran
    profiles = {kind: runner.profile_for(kind) for kind in KINDS}
    tiny = [kind for kind, profile in profiles.items() if profile == "tiny"]
    if tiny:
        log.warning("MODEL PROFILE: tiny for %s (random weights; outputs are not meaningful)", ", ".join(tiny))
    keys = settings.key_map()
    log.warning("visionjobs embedded: data in %s; %s", data_dir.resolve(),
                f"{len(keys)} API key(s)" if keys else "no API keys: one anonymous tenant, no authentication")

    stop = threading.Event()
    report(runner, list(KINDS))  # before serving: the API admits a kind only once a worker reported it
    start_reporting(runner, list(KINDS), stop)
    threading.Thread(target=poll_loop, args=(runner, list(KINDS), stop), name="embedded-worker",
                     daemon=True).start()
    try:
        uvicorn.run(create_app(ctx), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        stop.set()
