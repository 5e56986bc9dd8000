"""Re-queues jobs whose worker stopped renewing its lease. Safe to run in many processes:
each expired lease is handled by exactly one REAP transaction."""
from __future__ import annotations

import logging
import threading
import time

from service.dispatch import Dispatcher
from service.kinds import KINDS
from service.store.base import JobStore

log = logging.getLogger("visionjobs.reaper")


def reap_once(store: JobStore, dispatcher: Dispatcher, redispatch_after_s: float = 300.0) -> list[str]:
    requeued = store.reap_expired()
    for job_id in requeued:
        job = store.get_job(job_id)
        if job is not None:
            log.warning("job %s lost its worker (attempt %d); re-queued", job_id, job.attempt)
            dispatcher.dispatch(job_id, job.kind)
            store.mark_dispatched(job_id, redispatch_after_s)
    for kind in KINDS:
        for job_id in store.unsent_queued(kind, redispatch_after_s):
            log.warning("job %s queued for %.0f s without a message; sending one", job_id, redispatch_after_s)
            dispatcher.dispatch(job_id, kind)
    return requeued


class Reaper(threading.Thread):
    """`grace_s` (one lease): after the store was unreachable, live workers could not renew
    their leases either; reaping resumes only once they have had a full lease to do so, so an
    outage does not re-run every running job."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, interval_s: float, grace_s: float = 0.0):
        super().__init__(name="visionjobs-reaper", daemon=True)
        self.store, self.dispatcher, self.interval_s, self.grace_s = store, dispatcher, interval_s, grace_s
        self.stopped = threading.Event()
        self.resume_at = 0.0

    def run(self):
        outage = False
        while not self.stopped.wait(self.interval_s):
            try:
                if outage:
                    self.store.ping()
                    self.resume_at, outage = time.monotonic() + self.grace_s, False
                    log.info("job store back: reaping resumes in %.0f s", self.grace_s)
                if time.monotonic() >= self.resume_at:
                    reap_once(self.store, self.dispatcher)
            except Exception as exc:  # a store outage must not kill the thread
                outage = True
                log.warning("reaper pass failed: %s", exc)

    def stop(self):
        self.stopped.set()
