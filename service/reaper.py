"""Re-queues jobs whose worker stopped renewing its lease. Safe to run in many processes:
each expired lease is handled by exactly one REAP transaction."""
from __future__ import annotations

import logging
import threading

from service.dispatch import Dispatcher
from service.store.base import JobStore

log = logging.getLogger("visionjobs.reaper")


def reap_once(store: JobStore, dispatcher: Dispatcher) -> list[str]:
    requeued = store.reap_expired()
    for job_id in requeued:
        job = store.get_job(job_id)
        if job is not None:
            log.warning("job %s lost its worker (attempt %d); re-queued", job_id, job.attempt)
            dispatcher.dispatch(job_id, job.kind)
    return requeued


class Reaper(threading.Thread):
    def __init__(self, store: JobStore, dispatcher: Dispatcher, interval_s: float):
        super().__init__(name="visionjobs-reaper", daemon=True)
        self.store, self.dispatcher, self.interval_s = store, dispatcher, interval_s
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval_s):
            try:
                reap_once(self.store, self.dispatcher)
            except Exception as exc:  # a store outage must not kill the thread
                log.warning("reaper pass failed: %s", exc)

    def stop(self):
        self.stopped.set()
