"""Prometheus exposition for the API process: job counts by kind and state, queue depth."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.kinds import KINDS
from service.store.base import JobStore


class StoreCollector:
    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        jobs = GaugeMetricFamily("visionjobs_jobs", "Jobs known to the store, by kind and state", labels=["kind", "state"])
        for (kind, state), n in sorted(self.store.counts().items()):
            jobs.add_metric([kind, state], n)
        yield jobs
        depth = GaugeMetricFamily("visionjobs_queue_depth", "Queued jobs per kind", labels=["kind"])
        for kind in KINDS:
            depth.add_metric([kind], self.store.queue_depth(kind))
        yield depth


def build_registry(store: JobStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
