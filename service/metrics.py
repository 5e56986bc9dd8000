"""Prometheus exposition for the API process: job counts by kind and state, per kind the queue
depth, the oldest queued job's age and the busy workers (what autoscaling reads), the per-kind
histograms of finished jobs' time split (kept in the store, so every API process shows the same
totals), live workers per kind, this process's waiters (long-polls and event streams) and change
notifications; HTTP request metrics come from prometheus-fastapi-instrumentator (`instrument`),
in a registry of their own rendered with these."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from service.kinds import KINDS
from service.store.base import JOB_METRICS, METRIC_BUCKETS, JobStore

_METRIC_HELP = {"queue_s": "from creation to the final attempt's start", "load_s": "loading models",
                "run_s": "running, loading and uploads excluded", "upload_s": "writing outputs"}


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
        hists = self.store.job_metric_histograms()
        for name in JOB_METRICS:
            family = HistogramMetricFamily(f"visionjobs_job_{name[:-2]}_seconds",
                                           f"Finished jobs' time {_METRIC_HELP[name]}, per kind", labels=["kind"])
            for kind in KINDS:
                if (kind, name) not in hists:
                    continue
                counts, total, _ = hists[(kind, name)]
                cumulative, running = [], 0
                for bound, n in zip([*map(str, METRIC_BUCKETS), "+Inf"], counts):
                    running += n
                    cumulative.append((bound, running))
                family.add_metric([kind], cumulative, total)
            yield family
        live = GaugeMetricFamily("visionjobs_workers_live", "Workers that reported in the last two minutes, per kind",
                                 labels=["kind"])
        ready = GaugeMetricFamily("visionjobs_workers_ready", "Live workers able to run the kind (weights present)",
                                  labels=["kind"])
        for kind in KINDS:
            reports = self.store.get_capabilities(kind)
            live.add_metric([kind], len(reports))
            ready.add_metric([kind], sum(1 for r in reports if r.get("ready", True)))
        yield live
        yield ready


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


def instrument(app) -> CollectorRegistry:
    """HTTP request metrics (counts, latency histograms by route template, sizes) by
    prometheus-fastapi-instrumentator, in their own registry; event streams' open time is left
    out of the latency (they last as long as their job)."""
    from prometheus_fastapi_instrumentator import Instrumentator

    registry = CollectorRegistry()
    Instrumentator(registry=registry, should_exclude_streaming_duration=True,
                   excluded_handlers=["/metrics", "/healthz"]).instrument(app)
    return registry


def render_metrics(*registries: CollectorRegistry) -> bytes:
    return b"".join(generate_latest(r) for r in registries if r is not None)
