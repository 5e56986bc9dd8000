"""What this worker can run, reported per kind to the job store so the API can refuse requests
no live worker could serve (with the reason) instead of failing them later.

One report per (kind, worker), renewed every REPORT_INTERVAL_S (the API counts reports younger
than two minutes as live workers):

    profile   the kind's resolved profile (tiny | pretrained)
    worker    the worker's name (host:pid); weights_fingerprint  what its models load from
    ready     True when every model the kind declares can load under that profile
    missing   the files (relative to the model dir) that keep it from being ready
    features  {feature: [missing files]} from the kind's `capabilities` probe; [] = available
    <feature>, <feature>_missing  the same, flat (read by the colorize route)
"""
from __future__ import annotations

import logging
import threading

from service.kinds import KINDS
from worker.registry import runtime

log = logging.getLogger("visionjobs.worker")
REPORT_INTERVAL_S = 30.0


def kind_capabilities(runner, kind: str) -> dict:
    from models.profiles import missing_weights

    spec = KINDS[kind]
    profile = runner.profile_for(kind)
    missing = [] if profile == "tiny" else [m for model in spec.models
                                            for m in missing_weights(model, runner.settings.model_dir)]
    caps: dict = {"profile": profile, "ready": not missing, "missing": missing, "features": {},
                  "worker": runner.name, "weights_fingerprint": runner.weights_fingerprint(kind)}
    probe = runtime(kind).capabilities
    if probe is not None:
        caps["features"] = {name: list(files) for name, files in probe(runner).items()}
    for name, files in caps["features"].items():
        caps[name], caps[f"{name}_missing"] = not files, ", ".join(files)
    return caps


def report(runner, kinds: list[str]) -> None:
    for kind in kinds:
        if kind not in KINDS:
            continue
        try:
            runner.store.put_capabilities(kind, runner.name, kind_capabilities(runner, kind))
        except Exception as exc:  # never fatal: the API then counts this worker out after a while
            log.warning("could not report %s capabilities: %s", kind, exc)


def start_reporting(runner, kinds: list[str], stop: threading.Event | None = None) -> threading.Thread:
    stop = stop or threading.Event()

    def loop():
        while True:
            report(runner, kinds)
            if stop.wait(REPORT_INTERVAL_S):
                return

    thread = threading.Thread(target=loop, name="capabilities", daemon=True)
    thread.start()
    return thread
