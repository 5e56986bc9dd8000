"""Retention that deletes bytes, not only records.

The store schedules every object's end with the write that sets its record's expiry: an
upload's object at put_upload, a job's outputs (`jobs/<id>/`) at its final transition, both
after VISIONJOBS_RETENTION_S. Tuned artifacts (anomaly, subject and tuned video models) are
kept while jobs use them and deleted, resource and bytes, once unused for
VISIONJOBS_ARTIFACT_IDLE_S. A sweep in every API process deletes what is due; each item is
handed to one process. An S3 lifecycle rule (docker-compose.yml) is the backstop for objects
a lost sweep left behind.
"""
from __future__ import annotations

import logging
import threading

from service.storage.base import ObjectStore
from service.store.base import JobStore

log = logging.getLogger("visionjobs.retention")
BATCH = 100


def purge_once(store: JobStore, objects: ObjectStore, artifact_idle_s: float = 0.0) -> int:
    """Delete what is due now; returns the number of items handled."""
    handled = 0
    while due := store.claim_due_purges(BATCH):
        for item in due:
            try:
                objects.delete_prefix(item) if item.endswith("/") else objects.delete(item)
            except Exception:  # noqa: BLE001 - one failed delete must not stop the sweep; the S3 rule backs it up
                log.exception("could not delete expired objects %s", item)
        handled += len(due)
        if len(due) < BATCH:
            break
    if artifact_idle_s > 0:
        for kind, resource_id in store.idle_resources(artifact_idle_s, BATCH):
            doc = store.get_resource(kind, resource_id)
            if doc is None:
                continue
            store.delete_resource(kind, resource_id)
            if doc.get("prefix"):
                objects.delete_prefix(doc["prefix"])
            log.info("deleted %s %s, unused for %.0f s", kind, resource_id, artifact_idle_s)
            handled += 1
    return handled


class Purger(threading.Thread):
    def __init__(self, store: JobStore, objects: ObjectStore, interval_s: float, artifact_idle_s: float):
        super().__init__(name="visionjobs-retention", daemon=True)
        self.store, self.objects, self.interval_s, self.artifact_idle_s = store, objects, interval_s, artifact_idle_s
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval_s):
            try:
                purge_once(self.store, self.objects, self.artifact_idle_s)
            except Exception as exc:  # a store outage must not kill the thread
                log.warning("retention pass failed: %s", exc)

    def stop(self):
        self.stopped.set()
