"""Prometheus exposition for the API process: job counts by kind and state, per kind the queue
depth, the oldest queued job's age and the busy workers (what autoscaling reads), and
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
        # the autoscaling signal (README "Autoscaling workers"): demand per kind and what serves it
        depth = GaugeMetricFamily("visionjobs_queue_depth", "Queued jobs per kind", labels=["kind"])
        oldest = GaugeMetricFamily("visionjobs_queue_oldest_age_seconds", "How long the oldest queued job of "
                                   "the kind has waited (0: none queued)", labels=["kind"])
        busy = GaugeMetricFamily("visionjobs_workers_busy", "Worker processes running a job of the kind",
                                 labels=["kind"])
        for kind, stats in self.store.queue_stats(list(KINDS)).items():
            depth.add_metric([kind], stats.depth)
            oldest.add_metric([kind], round(stats.oldest_age_s, 3))
            busy.add_metric([kind], stats.busy_workers)
        yield depth
        yield oldest
        yield busy


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
