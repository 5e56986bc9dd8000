"""Runs one job: claim, heartbeat, the kind's handler, outputs to storage, final state.

Shared by the Celery task (distributed) and the store-polling loop (embedded). Never lets
an exception escape: every outcome ends as a job state, and the worker keeps serving.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from service.storage.base import ObjectNotFound, ObjectStore
from service.store.base import CANCELED, FAILED, SUCCEEDED, JobRecord, JobStore, StoreUnavailable
from worker.config import WorkerSettings
from worker.control import JobControl, watchdog
from worker.errors import InvalidInput, JobCanceled, JobFailed, ModelsNotReady, OwnershipLost
from worker.batching import execute_batch, partners
from worker.model_cache import ModelCache, release_memory

log = logging.getLogger("visionjobs.worker")
STORE_WAIT_S = 300.0  # how long a worker waits for an unreachable job store to claim or finish a job


def with_store_retry(what: str, fn, *, give_up_after: float = STORE_WAIT_S):
    """Call `fn` until the job store answers (backoff 0.25 s .. 5 s), at most `give_up_after`
    seconds; then let StoreUnavailable out. For the calls a job cannot do without: its claim
    and its final write (a Redis restart must neither drop a message nor fail a finished job)."""
    deadline, delay = time.monotonic() + give_up_after, 0.25
    while True:
        try:
            return fn()
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: job store unreachable, retrying in %.2f s: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError without importing torch here; MPS/CPU allocators say the same words.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


@dataclass
class JobContext:
    """What a job handler may touch."""

    job: JobRecord
    control: JobControl
    runner: "Runner"

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def read_upload(self, upload_id: str, field: str) -> bytes:
        rec = self.runner.store.get_upload(upload_id)
        if rec is None or rec.tenant != self.job.tenant:
            raise InvalidInput(f"{field}: upload {upload_id} no longer exists")
        try:
            return self.runner.objects.get(rec.key)
        except ObjectNotFound:
            raise InvalidInput(f"{field}: the file of upload {upload_id} is gone")

    def write_output(self, name: str, data: bytes, content_type: str) -> str:
        self.control.check()  # a stale attempt must not overwrite the live one's files
        key = f"jobs/{self.job.id}/{name}"
        self.runner.objects.put(key, data, content_type)
        return key

    def pipeline(self, kind: str):
        return self.runner.pipeline(kind)


class Runner:
    def __init__(self, settings: WorkerSettings, store: JobStore, objects: ObjectStore, name: str | None = None,
                 *, exit_on_hang: bool = False):
        self.settings, self.store, self.objects = settings, store, objects
        # exit_on_hang: this process is a dedicated worker the launcher replaces (worker/control.py)
        watchdog.configure(grace_s=settings.job_kill_grace_s, exit_process=exit_on_hang)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.cache = ModelCache(int(settings.model_cache_gb * 2**30))
        self._device: str | None = None
        self._profiles: dict[str, str] = {}

    @property
    def device(self) -> str:
        if self._device is None:
            import torch  # first touch of CUDA happens here, in the worker process, never before a fork

            want = self.settings.device
            self._device = ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want
        return self._device

    def profile_for(self, kind: str) -> str:
        """`tiny` or `pretrained`; `auto` is resolved once per kind (with a loud warning on tiny)."""
        if kind not in self._profiles:
            from models.profiles import resolve_profile

            self._profiles[kind] = resolve_profile(self.settings.model_profile, self.settings.model_dir, kind)
        return self._profiles[kind]

    def pipeline(self, kind: str):
        from models.profiles import WeightsMissing, load

        profile = self.profile_for(kind)

        extra = {"guide_dir": self.settings.autoguidance_dir} if kind == "colorize" else {}

        def loader():
            from models.acceleration import accelerate

            pipe = load(kind, profile, self.settings.model_dir, self.device, **extra)
            compiled = kind in {k.strip() for k in self.settings.torch_compile.split(",")}
            accelerate(pipe, self.device, kind=kind, channels_last=self.settings.channels_last, compile=compiled)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)  # progress goes to the job store, not the log
            return pipe

        try:
            return self.cache.get((kind, profile, self.device), loader)
        except WeightsMissing as exc:
            raise ModelsNotReady(str(exc)) from exc

    def preload(self, kinds: list[str]) -> None:
        from worker.jobs import HANDLERS, WARMUPS

        for kind in kinds:
            if kind in HANDLERS:
                log.info("preloading %s (%s profile on %s)", kind, self.profile_for(kind), self.device)
                pipe = self.pipeline(kind)
                warmup = WARMUPS.get(kind)
                if warmup is not None:  # one tiny forward pass: the first real job then finds kernels warm
                    warmup(pipe)

    def _run_handler(self, handler, job: JobRecord, control: JobControl):
        """A store outage mid-job (an input could not be read) is not the job's fault: wait for
        the store, and if this attempt still owns the job, run the handler again in the same
        attempt (outputs go to fixed keys, so a second pass overwrites)."""
        while True:
            try:
                return handler(JobContext(job, control, self))
            except StoreUnavailable as exc:
                log.warning("job %s attempt %d: job store unreachable mid-job, waiting for it: %s",
                            job.id, job.attempt, exc)
                current = with_store_retry(f"job {job.id}", lambda: self.store.get_job(job.id))
                if current is None or current.status != "running" or current.attempt != job.attempt:
                    raise OwnershipLost("the job was re-queued while the store was unreachable") from exc
                log.info("job %s attempt %d: job store back, running the job again", job.id, job.attempt)

    def execute(self, job_id: str) -> str:
        from worker.jobs import HANDLERS

        claim = with_store_retry(f"claim {job_id}", lambda: self.store.claim(job_id, self.name, self.settings.lease_s))
        if claim.job is None:
            log.info("job %s not claimed: %s", job_id, claim.reason)
            return claim.reason
        job = claim.job
        log.info("job %s (%s) attempt %d started on %s", job.id, job.kind, job.attempt, self.name)
        batch = partners(self, job)
        if len(batch) > 1:
            return execute_batch(self, batch)[job.id]
        control = JobControl(self.store, job, lease_s=self.settings.lease_s,
                             progress_interval_s=self.settings.progress_interval_s,
                             time_limit_s=self.settings.job_time_limit_s)
        status, result, error = FAILED, None, None
        with control:
            try:
                handler = HANDLERS.get(job.kind)
                if handler is None:
                    raise JobFailed(f"this worker has no handler for kind {job.kind!r}", "unsupported_kind")
                control.report(0.0, "loading model", force=True)
                result = self._run_handler(handler, job, control)
                status = SUCCEEDED
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
            except JobFailed as exc:
                error = {"code": exc.code, "message": str(exc)}
            except Exception as exc:
                if is_out_of_memory(exc):
                    error = {"code": "out_of_memory", "message": f"the device ran out of memory: {exc}"[:500]}
                else:
                    log.exception("job %s failed", job.id)
                    error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                if status != SUCCEEDED:
                    release_memory()
            # Still inside the lease heartbeat: a store outage here delays the final write, it does
            # not lose it (the heartbeat renews the lease as soon as the store answers again).
            done = with_store_retry(f"finish {job.id}", lambda: self.store.finish(
                job.id, job.attempt, status, result=result, error=error, model_profile=self._profiles.get(job.kind)))
        log.info("job %s -> %s%s", job.id, status, "" if done else " (not recorded: ownership lost)")
        return status
