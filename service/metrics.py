"""Prometheus exposition for the API process: job counts by kind and state, queue depth, and
this process's waiters (long-polls and event streams) and change notifications."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class WaiterCollector:
    def __init__(self, hub):
        self.hub = hub

    def collect(self):
        yield GaugeMetricFamily("visionjobs_api_waiters", "Open long-polls and event streams in this API process",
                                value=self.hub.total)
        yield CounterMetricFamily("visionjobs_api_change_notifications", "Job change notifications this API "
                                  "process received", value=self.hub.published)


def build_registry(store: JobStore, hub=None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if hub is not None:
        registry.register(WaiterCollector(hub))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
