"""What this worker can run, reported to the job store so the API can refuse requests no live
worker could serve (with the reason) instead of failing them later."""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("visionjobs.worker")
REPORT_INTERVAL_S = 30.0


def colorize_capabilities(runner) -> dict:
    """Optional Control Color features and, when absent, the files that would enable them."""
    profile = runner.profile_for("colorize")
    caps: dict = {"profile": profile}
    for feature in ("exemplar", "deformable_decoder", "autoguidance"):
        missing: list[str] = []
        if profile == "pretrained":
            from models.colorization import weights_layout as layout

            model_dir = runner.settings.model_dir
            missing = {"exemplar": lambda: layout.exemplar_weights_missing(model_dir),
                       "deformable_decoder": lambda: layout.deformable_weights_missing(model_dir),
                       "autoguidance": lambda: layout.guide_weights_missing(runner.settings.autoguidance_dir, model_dir)
                       if runner.settings.autoguidance_dir else ["VISIONJOBS_AUTOGUIDANCE_DIR (unset)"]}[feature]()
        caps[feature], caps[f"{feature}_missing"] = not missing, ", ".join(missing)
    return caps


CAPABILITIES = {"colorize": colorize_capabilities}


def report(runner, kinds: list[str]) -> None:
    for kind in kinds:
        probe = CAPABILITIES.get(kind)
        if probe is None:
            continue
        try:
            runner.store.put_capabilities(kind, runner.name, probe(runner))
        except Exception as exc:  # never fatal: the API then simply accepts and the job reports
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
