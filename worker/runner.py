"""Runs one job: claim, heartbeat, the kind's handler, outputs to storage, final state.

The kind's handler, batching and warm-up come from its declaration (service/kinds.py,
resolved by worker/registry.py); handlers get a `worker.context.JobContext`.

Shared by the Celery task (distributed) and the store-polling loop (embedded). Never lets
an exception escape: every outcome ends as a job state, and the worker keeps serving.
"""
from __future__ import annotations

import logging
import os
import socket
import time

from service.kinds import KINDS
from service.storage.base import ObjectStore
from service.store.base import CANCELED, FAILED, SUCCEEDED, JobRecord, JobStore, StoreUnavailable
from worker.batching import execute_batch, partners
from worker.config import WorkerSettings
from worker.context import JobContext
from worker.control import JobControl, watchdog
from worker.errors import JobCanceled, JobFailed, JobHandedBack, ModelsNotReady, OwnershipLost
from worker.joblog import capture
from worker.model_cache import ModelCache, release_memory
from worker.outcomes import STORE_WAIT_S, is_out_of_memory, with_store_retry  # noqa: F401  (re-exported)
from worker.registry import runtime

log = logging.getLogger("visionjobs.worker")


class Runner:
    def __init__(self, settings: WorkerSettings, store: JobStore, objects: ObjectStore, name: str | None = None,
                 *, exit_on_hang: bool = False):
        self.settings, self.store, self.objects = settings, store, objects
        # exit_on_hang: this process is a dedicated worker the launcher replaces (worker/control.py)
        watchdog.configure(grace_s=settings.job_kill_grace_s, exit_process=exit_on_hang)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.cache = ModelCache(int(settings.model_cache_gb * 2**30))
        self._device: str | None = None
        self.profiles: dict[str, str] = {}  # job kind (or model name) -> resolved profile
        self._fingerprints: dict[str, str] = {}

    @property
    def device(self) -> str:
        if self._device is None:
            import torch  # first touch of CUDA happens here, in the worker process, never before a fork

            want = self.settings.device
            self._device = ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want
        return self._device

    def profile_for(self, kind: str) -> str:
        """`tiny` or `pretrained` for a job kind: `auto` is resolved once per kind, from the
        files of the models the kind declares (with a loud warning when it falls back to tiny).
        A name that is not a job kind is taken as a `models.profiles` entry."""
        if kind not in self.profiles:
            from models.profiles import resolve_profile

            models = list(KINDS[kind].models) if kind in KINDS else [kind]
            self.profiles[kind] = resolve_profile(self.settings.model_profile, self.settings.model_dir, models)
        return self.profiles[kind]

    def weights_fingerprint(self, kind: str) -> str | None:
        """A digest of what the kind's models load from (models.profiles.weights_fingerprint),
        once per kind: jobs record it, capability reports publish it."""
        if kind not in KINDS:
            return None
        if kind not in self._fingerprints:
            from models.profiles import weights_fingerprint

            spec = KINDS[kind]
            self._fingerprints[kind] = weights_fingerprint([*spec.models, *spec.optional_models],
                                                           self.profile_for(kind), self.settings.model_dir)
        return self._fingerprints[kind]

    def job_control(self, job: JobRecord) -> JobControl:
        s = self.settings
        return JobControl(self.store, job, lease_s=s.lease_s, progress_interval_s=s.progress_interval_s,
                          time_limit_s=s.job_time_limit_s, log_bytes=s.job_log_bytes)

    def final_extra(self, ctx: JobContext, run_s: float | None) -> dict:
        """The worker-owned fields of a final write: the job's log, its time split, its weights."""
        job, timings = ctx.job, ctx.control.timings
        metrics = {"queue_s": max(0.0, (job.started_at or job.created_at) - job.created_at),
                   "load_s": timings.get("load_s", 0.0), "upload_s": timings.get("upload_s", 0.0)}
        if run_s is not None:
            metrics["run_s"] = max(0.0, run_s - metrics["load_s"] - metrics["upload_s"])
        metrics = {k: round(v, 4) for k, v in metrics.items()}
        try:
            fingerprint = self.weights_fingerprint(job.kind)
        except Exception as exc:  # a fingerprint is information, never a reason to lose a result
            log.warning("no weights fingerprint for %s: %s", job.kind, exc)
            fingerprint = None
        return {"logs": ctx.control.log.snapshot(), "metrics": metrics, "weights_fingerprint": fingerprint}

    def observe(self, job: JobRecord, extra: dict) -> None:
        """The final job's time split into the per-kind histograms of /metrics (best effort)."""
        try:
            self.store.observe_job_metrics(job.kind, extra.get("metrics") or {})
        except Exception as exc:
            log.warning("job %s: metrics not counted: %s", job.id, exc)

    def pipeline(self, model: str, kind: str | None = None):
        """The warm pipeline of a `models.profiles` entry under the profile of `kind` (default:
        the entry's own name, for entries named like their kind)."""
        from models.profiles import WeightsMissing, load

        profile = self.profile_for(kind or model)

        extra = {"guide_dir": self.settings.autoguidance_dir} if model == "colorize" else {}

        def loader():
            import torch

            from models.acceleration import accelerate

            if model == "colorize" and self.settings.colorize_fp32:
                extra["dtype"] = torch.float32  # the official precision; default: fp16 on CUDA
            pipe = load(model, profile, self.settings.model_dir, self.device, **extra)
            compiled = model in {k.strip() for k in self.settings.torch_compile.split(",")}
            accelerate(pipe, self.device, kind=model, channels_last=self.settings.channels_last, compile=compiled)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)  # progress goes to the job store, not the log
            return pipe

        try:
            return self.cache.get((model, profile, self.device), loader)
        except WeightsMissing as exc:
            raise ModelsNotReady(str(exc)) from exc

    def context(self, job: JobRecord, control: JobControl) -> JobContext:
        return JobContext(job, control, self)

    def preload(self, kinds: list[str]) -> None:
        """Load every model the kinds declare (optional ones where their weights are present)
        and run each kind's warm-up, so the first job of each kind loads nothing. A kind whose
        weights are missing is logged and skipped: the worker still starts and reports it
        not ready (the API then refuses it)."""
        from models.profiles import missing_weights

        warmed: set[int] = set()
        for kind in kinds:
            if kind not in KINDS:
                continue
            spec, rt = KINDS[kind], runtime(kind)
            try:
                profile = self.profile_for(kind)
                log.info("preloading %s (%s profile on %s)", kind, profile, self.device)
                pipes = [self.pipeline(model, kind) for model in spec.models]
                for model in spec.optional_models:
                    if profile == "tiny" or not missing_weights(model, self.settings.model_dir):
                        self.pipeline(model, kind)
            except ModelsNotReady as exc:
                log.error("cannot preload %s: %s", kind, exc)
                continue
            if rt.warmup is not None and pipes and id(pipes[0]) not in warmed:
                warmed.add(id(pipes[0]))  # one tiny pass: the first real job then finds kernels warm
                rt.warmup(pipes[0])

    def _run_handler(self, handler, ctx: JobContext):
        """A store outage mid-job (an input could not be read) is not the job's fault: wait for
        the store, and if this attempt still owns the job, run the handler again in the same
        attempt (outputs go to fixed keys, so a second pass overwrites)."""
        job = ctx.job
        while True:
            try:
                return handler(ctx)
            except StoreUnavailable as exc:
                log.warning("job %s attempt %d: job store unreachable mid-job, waiting for it: %s",
                            job.id, job.attempt, exc)
                current = with_store_retry(f"job {job.id}", lambda: self.store.get_job(job.id))
                if current is None or current.status != "running" or current.attempt != job.attempt:
                    raise OwnershipLost("the job was re-queued while the store was unreachable") from exc
                log.info("job %s attempt %d: job store back, running the job again", job.id, job.attempt)

    def execute(self, job_id: str) -> str:
        claim = with_store_retry(f"claim {job_id}", lambda: self.store.claim(job_id, self.name, self.settings.lease_s))
        if claim.job is None:
            log.info("job %s not claimed: %s", job_id, claim.reason)
            return claim.reason
        job = claim.job
        log.info("job %s (%s) attempt %d started on %s", job.id, job.kind, job.attempt, self.name)
        rt = runtime(job.kind) if job.kind in KINDS else None
        if rt is not None and rt.batch_key is not None:
            batch = partners(self, job, rt.batch_key)
            if len(batch) > 1:
                return execute_batch(self, batch, rt.run_batch)[job.id]
        control = self.job_control(job)
        ctx = self.context(job, control)
        status, result, error = FAILED, None, None
        started = time.perf_counter()
        with control, capture(control.log):
            try:
                if rt is None:
                    raise JobFailed(f"this worker has no handler for kind {job.kind!r}", "unsupported_kind")
                self.profile_for(job.kind)  # resolved once per kind: every final state names its profile
                control.report(0.0, "loading model", force=True)
                result = self._run_handler(rt.handler, ctx)
                status = SUCCEEDED
            except JobHandedBack:
                released = with_store_retry(f"hand back {job.id}", lambda: self.store.release(job.id, job.attempt))
                log.warning("job %s attempt %d %s", job.id, job.attempt, "handed back to the queue: the worker is "
                            "stopping" if released else "stopped, not handed back (no longer ours): the lease decides")
                return "handed_back" if released else "ownership_lost"
            except OwnershipLost:
                log.warning("job %s attempt %d lost its lease; stopping without a final write", job.id, job.attempt)
                return "ownership_lost"
            except StoreUnavailable as exc:
                # The store stayed away longer than the runner waits for it: write nothing; the
                # lease lapses and the reaper re-queues the job once the store is back.
                log.warning("job %s attempt %d abandoned, job store unreachable: %s", job.id, job.attempt, exc)
                return "store_unavailable"
            except JobCanceled as exc:
                status, error = CANCELED, {"code": exc.code, "message": str(exc)}
                control.log.add("INFO", f"canceled: {exc}")
            except JobFailed as exc:
                error = {"code": exc.code, "message": str(exc)}
                control.log.add("ERROR", f"{exc.code}: {exc}")
            except Exception as exc:
                if is_out_of_memory(exc):
                    error = {"code": "out_of_memory", "message": f"the device ran out of memory: {exc}"[:500]}
                else:
                    log.exception("job %s failed", job.id)
                    error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
                control.log.failure(exc)
            finally:
                if status != SUCCEEDED:
                    release_memory()
            extra = self.final_extra(ctx, time.perf_counter() - started)
            # Still inside the lease heartbeat: a store outage here delays the final write, it does
            # not lose it (the heartbeat renews the lease as soon as the store answers again).
            done = with_store_retry(f"finish {job.id}", lambda: self.store.finish(
                job.id, job.attempt, status, result=result, error=error, model_profile=ctx.reported_profile(),
                extra=extra))
        if done:
            self.observe(job, extra)
        log.info("job %s -> %s%s", job.id, status, "" if done else " (not recorded: ownership lost)")
        return status
