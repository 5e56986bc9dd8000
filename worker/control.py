"""The bridge between a running pipeline and the job store: lease heartbeat, throttled
progress, and the cancel/timeout checks the pipeline's step callback performs."""
from __future__ import annotations

import logging
import threading
import time

from service.store.base import JobRecord, JobStore, StoreUnavailable
from worker.errors import JobCanceled, JobTimeout, OwnershipLost

log = logging.getLogger("visionjobs.worker")
STORE_RETRY_S = 1.0  # after a failed store call, steps skip the store this long


class JobControl:
    def __init__(self, store: JobStore, job: JobRecord, *, lease_s: float, progress_interval_s: float,
                 time_limit_s: float):
        self.store, self.job = store, job
        self.lease_s, self.interval_s, self.time_limit_s = lease_s, progress_interval_s, time_limit_s
        self.started = time.monotonic()
        self._stop = threading.Event()   # heartbeat said: cancel requested or ownership lost
        self._done = threading.Event()
        self._last_write = 0.0
        self._progress = 0.0
        self._last_outage_log = float("-inf")
        self._store_retry_at = float("-inf")
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job.id}", daemon=True)

    # --- lease ---
    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self):
        while not self._done.wait(self.lease_s / 3):
            try:
                if self.store.heartbeat(self.job.id, self.job.attempt, self.lease_s):
                    self._stop.set()
            except Exception as exc:  # keep trying: the lease has slack for two missed beats
                log.warning("heartbeat for %s failed: %s", self.job.id, exc)

    # --- progress and checks ---
    def report(self, progress: float, stage: str, *, force: bool = False, result: dict | None = None) -> None:
        """Called at every step: writes progress at most every interval, but looks for a
        cancel every time, so a running job stops within one step of the request. `result`:
        the job's partial result so far (written with the progress: pass `force` with it).

        A store outage does not fail the job: the pipeline keeps computing while the lease has
        slack; if the outage outlasts the lease, the reaper re-queues the job once the store is
        back, and this attempt learns it at its next successful read (OwnershipLost)."""
        # clients see progress only grow (stages computed separately may round a hair lower)
        progress = self._progress = round(max(progress, self._progress), 6)
        now = time.monotonic()
        if now < self._store_retry_at:  # the store just failed: do not stall every step on it
            self.check()
            return
        try:
            if force or now - self._last_write >= self.interval_s:
                self._last_write = now
                stop = self.store.heartbeat(self.job.id, self.job.attempt, self.lease_s, progress=progress,
                                            stage=stage, result=result)
            else:
                stop = self.store.should_stop(self.job.id, self.job.attempt)
        except StoreUnavailable as exc:
            self._store_down(exc)
            stop = False
        if stop:
            self._stop.set()
        self.check()

    def _store_down(self, exc: Exception) -> None:
        now = time.monotonic()
        self._store_retry_at = now + STORE_RETRY_S
        if now - self._last_outage_log >= 5.0:  # one line per outage-ish, not one per step
            self._last_outage_log = now
            log.warning("job %s: job store unreachable, carrying on (lease %g s): %s", self.job.id, self.lease_s, exc)

    def check(self) -> None:
        if self._stop.is_set():
            try:
                current = self.store.get_job(self.job.id)
            except StoreUnavailable:  # told to stop, cannot tell why: write nothing, the lease decides
                raise OwnershipLost("this attempt was told to stop and the store is unreachable") from None
            if current is not None and current.status == "running" and current.attempt == self.job.attempt:
                raise JobCanceled("canceled by the client")
            raise OwnershipLost("this attempt no longer owns the job")
        if time.monotonic() - self.started > self.time_limit_s:
            raise JobTimeout(f"the job ran longer than its limit of {self.time_limit_s:g} s")

    def step_callback(self, total_steps: int, label: str, start: float = 0.0, end: float = 1.0):
        """A diffusers-style `callback_on_step_end` reporting `label i/total` over [start, end]."""

        def callback(pipe, step_index, timestep, callback_kwargs):
            done = step_index + 1
            self.report(start + (end - start) * done / total_steps, f"{label} {done}/{total_steps}",
                        force=done == total_steps)
            return callback_kwargs

        return callback
