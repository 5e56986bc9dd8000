"""The bridge between a running pipeline and the job store: lease heartbeat, throttled
progress, the cancel/timeout checks the pipeline's step callback performs, and the watchdog
that ends an attempt stuck past its time limit inside one long call.

The time limit runs from the claim: decoding inputs, loading models, denoising, encoding and
uploads all count. Two ways an attempt ends at it:
1. cooperatively, at the next `check()` (every step, every input, every output): JobTimeout,
   the job fails with `timeout` and the worker goes on serving;
2. when no check comes (the job is inside one long C call: a hostile decode, a model load, an
   upload), the watchdog thread records `timeout` at limit + grace, exactly once (the store's
   finish is conditional on the attempt), then - in a dedicated worker process - exits the
   process with EXIT_HUNG_JOB so the launcher starts a fresh one; in-process workers (the
   embedded `visionjobs run`, tests) cannot kill their thread: the attempt is abandoned and
   writes nothing when the call returns. A C call holding the GIL would stop the watchdog
   thread too, so a worker process also arms faulthandler's C-level timer BACKSTOP_S later:
   it exits without a final write, the lease lapses and the reaper re-queues or fails the job.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

from service.store.base import FAILED, JobRecord, JobStore, StoreUnavailable
from worker.errors import JobCanceled, JobHandedBack, JobTimeout, OwnershipLost
from worker.joblog import JobLog

log = logging.getLogger("visionjobs.worker")
STORE_RETRY_S = 1.0  # after a failed store call, steps skip the store this long
EXIT_HUNG_JOB = 75  # exit status of a worker process the watchdog ended (EX_TEMPFAIL)
BACKSTOP_S = 30.0
# set when a stopping worker's drain time is up (worker/drain.py): every running attempt of this
# process ends at its next check and hands its job back
HAND_BACK = threading.Event()


def start_drain(timeout_s: float) -> threading.Timer:
    log.warning("worker stopping: the running job has %.0f s to finish, then it is handed back", timeout_s)
    timer = threading.Timer(timeout_s, HAND_BACK.set)
    timer.daemon = True
    timer.start()
    return timer


class Watchdog:
    """One per process: watches every live JobControl's hard deadline (limit + grace)."""

    def __init__(self):
        self.grace_s = 10.0
        self.exit_process = False
        self.exit = os._exit  # tests replace it
        self._controls: set["JobControl"] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def configure(self, *, grace_s: float, exit_process: bool) -> None:
        self.grace_s, self.exit_process = float(grace_s), bool(exit_process)

    def watch(self, control: "JobControl") -> None:
        with self._lock:
            self._controls.add(control)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="job-watchdog", daemon=True)
                self._thread.start()
        self._rearm()

    def unwatch(self, control: "JobControl") -> None:
        with self._lock:
            self._controls.discard(control)
        self._rearm()

    def _rearm(self) -> None:
        self._wake.set()
        if not self.exit_process:
            return
        with self._lock:
            deadlines = [c.hard_deadline for c in self._controls]
        try:
            if deadlines:
                # the process's own stderr: Celery replaces sys.stderr with a proxy without a file descriptor
                faulthandler.dump_traceback_later(max(1.0, min(deadlines) - time.monotonic() + BACKSTOP_S),
                                                  exit=True, file=sys.__stderr__)
            else:
                faulthandler.cancel_dump_traceback_later()
        except (AttributeError, ValueError, OSError) as exc:  # no usable stderr: the watchdog thread remains
            log.warning("no C-level backstop for the job watchdog: %s", exc)

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before the snapshot: a watch() after it wakes the wait below
            with self._lock:
                controls = list(self._controls)
            now = time.monotonic()
            expired = [c for c in controls if now >= c.hard_deadline and not c.expired]
            ended = [c for c in expired if c.expire()]
            if ended and self.exit_process:
                log.error("worker process exits (status %d): %s stuck past the time limit; the launcher starts "
                          "a new process", EXIT_HUNG_JOB, ", ".join(c.job.id for c in ended))
                for handler in logging.getLogger().handlers:
                    try:
                        handler.flush()
                    except Exception:
                        pass
                sys.stderr.flush()
                self.exit(EXIT_HUNG_JOB)
                return
            pending = [c.hard_deadline for c in controls if not c.expired]
            self._wake.wait(max(0.05, min(pending) - now) if pending else 60.0)


watchdog = Watchdog()


class JobControl:
    def __init__(self, store: JobStore, job: JobRecord, *, lease_s: float, progress_interval_s: float,
                 time_limit_s: float, grace_s: float | None = None, log_bytes: int = 32768):
        self.store, self.job = store, job
        self.log = JobLog(job.logs, log_bytes, job.attempt)  # the job's own log (worker/joblog.py)
        self.timings = {"load_s": 0.0, "upload_s": 0.0}  # added to by the job's context
        self.lease_s, self.interval_s, self.time_limit_s = lease_s, progress_interval_s, time_limit_s
        self.started = time.monotonic()
        self.hard_deadline = self.started + time_limit_s + (watchdog.grace_s if grace_s is None else grace_s)
        self.expired = False  # the watchdog ended this attempt
        self._stage = "starting"
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
        watchdog.watch(self)
        return self

    def __exit__(self, *exc):
        watchdog.unwatch(self)
        self._done.set()
        self._thread.join(timeout=5)

    def expire(self) -> bool:
        """The watchdog's end of this attempt: record `timeout` (True when this call recorded it;
        False when the attempt had already finished or lost the job)."""
        self.expired = True
        self._stop.set()
        message = (f"the job ran longer than its limit of {self.time_limit_s:g} s (ended by the watchdog "
                   f"during: {self._stage})")
        try:
            self.log.add("ERROR", message)
            done = self.store.finish(self.job.id, self.job.attempt, FAILED,
                                     error={"code": JobTimeout.code, "message": message},
                                     extra={"logs": self.log.snapshot()})
        except Exception as exc:
            # The store is away: a worker process exits all the same (the stuck call holds the
            # device), and the lease, no longer renewed, hands the job to the reaper.
            log.error("job %s: watchdog could not record the timeout: %s", self.job.id, exc)
            return True
        log.error("job %s attempt %d: %s%s", self.job.id, self.job.attempt, message,
                  "" if done else " (already final or re-queued: nothing recorded)")
        return bool(done)

    def _beat(self):
        while not self._done.wait(self.lease_s / 3):
            try:
                if self.store.heartbeat(self.job.id, self.job.attempt, self.lease_s, extra=self._logs()):
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
        self._stage = stage
        force = self.log.stage(stage) or force  # a new stage reaches the job's log (and clients) at once
        now = time.monotonic()
        if now < self._store_retry_at:  # the store just failed: do not stall every step on it
            self.check()
            return
        try:
            if force or now - self._last_write >= self.interval_s:
                self._last_write = now
                stop = self.store.heartbeat(self.job.id, self.job.attempt, self.lease_s, progress=progress,
                                            stage=stage, result=result, extra=self._logs())
            else:
                stop = self.store.should_stop(self.job.id, self.job.attempt)
        except StoreUnavailable as exc:
            self._store_down(exc)
            stop = False
        if stop:
            self._stop.set()
        self.check()

    def _logs(self) -> dict | None:
        """The log for the next store write, when it has new lines."""
        pending = self.log.pending()
        return None if pending is None else {"logs": pending}

    def _store_down(self, exc: Exception) -> None:
        now = time.monotonic()
        self._store_retry_at = now + STORE_RETRY_S
        if now - self._last_outage_log >= 5.0:  # one line per outage-ish, not one per step
            self._last_outage_log = now
            log.warning("job %s: job store unreachable, carrying on (lease %g s): %s", self.job.id, self.lease_s, exc)

    def check(self) -> None:
        if HAND_BACK.is_set():
            raise JobHandedBack("the worker is stopping: the job goes back to the queue")
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
