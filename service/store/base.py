"""The job store: the single source of truth for jobs and uploads.

Celery (or the embedded runner) only moves job ids around; every state change goes
through one of the atomic operations below. Two implementations share these semantics:
RedisJobStore (distributed) and SqliteJobStore (embedded, no server).
"""
from __future__ import annotations

import abc
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELED})
ALL_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
ARTIFACTS = "artifacts"  # the byte ledger of tuned artifacts: resources whose doc has `stored_bytes`
FOREVER_S = 100 * 365 * 86400  # an artifact's bytes count until it is deleted


_id_lock = threading.Lock()
_id_last = [0, 0]  # last millisecond, sequence within it


def new_id(prefix: str) -> str:
    """Time-sortable id: 12 hex digits of milliseconds, a 4-digit sequence (ordered within one
    process and millisecond), 8 random hex digits."""
    with _id_lock:
        ms = max(int(time.time() * 1000), _id_last[0])
        _id_last[1] = _id_last[1] + 1 if ms == _id_last[0] else 0
        _id_last[0] = ms
        seq = _id_last[1] & 0xFFFF
    return f"{prefix}_{ms:012x}{seq:04x}{secrets.token_hex(4)}"


@dataclass
class JobRecord:
    id: str
    tenant: str
    kind: str
    params: dict[str, Any]
    status: str = QUEUED
    progress: float = 0.0
    stage: str | None = "queued"
    attempt: int = 0
    max_attempts: int = 3
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    model_profile: str | None = None
    cancel_requested: bool = False
    worker: str | None = None
    version: int = 0
    webhook_events: str | None = None  # ",succeeded,failed," : the states that trigger a delivery
    webhook_deliveries: dict[str, Any] | None = None  # event -> delivery state
    logs: dict[str, Any] | None = None  # {"total": lines ever written, "lines": the last ones kept}
    metrics: dict[str, float] | None = None  # queue_s, load_s, run_s, upload_s (worker-measured)
    weights_fingerprint: str | None = None  # what the final attempt's models were loaded from

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# bucket bounds (seconds) of the job-time histograms; the last bucket is +Inf
METRIC_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
JOB_METRICS = ("queue_s", "load_s", "run_s", "upload_s")


def bucket_of(value: float) -> int:
    return next((i for i, bound in enumerate(METRIC_BUCKETS) if value <= bound), len(METRIC_BUCKETS))


# the worker-owned fields heartbeat/finish may set through `extra`
EXTRA_FIELDS = frozenset({"logs", "metrics", "weights_fingerprint"})


def check_extra(extra: dict[str, Any] | None) -> dict[str, Any]:
    unknown = set(extra or ()) - EXTRA_FIELDS
    if unknown:
        raise ValueError(f"not worker-owned job fields: {sorted(unknown)}")
    return {k: v for k, v in (extra or {}).items() if v is not None}


@dataclass
class UploadRecord:
    id: str
    tenant: str
    filename: str
    content_type: str
    size: int
    sha256: str
    key: str
    created_at: float = field(default_factory=time.time)
    width: int | None = None
    height: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueueStats:
    """One kind's autoscaling signal (/metrics)."""
    depth: int = 0                 # queued jobs
    oldest_age_s: float = 0.0      # how long the oldest queued job has waited (0: none queued)
    busy_workers: int = 0          # worker processes running a job of this kind (a batch counts once)


@dataclass
class Claim:
    """Outcome of a claim: `job` is set only when this caller now owns the attempt."""

    job: JobRecord | None
    reason: str = ""  # "claimed" | "not_found" | "canceled" | "not_queued"


class StoreUnavailable(RuntimeError):
    """The backing server cannot be reached (the API answers 503)."""


class StoreFull(StoreUnavailable):
    """The backing store refuses writes (Redis at maxmemory, a full disk): an outage, 503."""


class IdempotencyMismatch(ValueError):
    """An Idempotency-Key already used by this tenant for another route or body (422)."""

    def __init__(self, job_id: str):
        super().__init__("idempotency key reused with a different request")
        self.job_id = job_id


class JobStore(abc.ABC):
    # --- API side ---
    @abc.abstractmethod
    def create_job(self, job: JobRecord, idempotency_key: str | None = None,
                   fingerprint: str = "") -> tuple[JobRecord, bool]:
        """Insert a queued job. With an idempotency key already used by this tenant, return the
        existing job and False instead, or raise IdempotencyMismatch when the key was used with
        another `fingerprint` (of the route and body)."""

    @abc.abstractmethod
    def find_idempotent(self, tenant: str, idempotency_key: str, fingerprint: str = "") -> JobRecord | None:
        """The live job this tenant's key made (IdempotencyMismatch for another fingerprint), or None."""

    @abc.abstractmethod
    def discard_job(self, job_id: str) -> bool:
        """Remove a queued job that was never claimed, with its idempotency key (its queue message
        could not be sent): True when removed; False when it is gone or a worker already has it."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def list_jobs(self, tenant: str, *, kind: str | None = None, status: str | None = None,
                  cursor: str | None = None, limit: int = 20) -> tuple[list[JobRecord], str | None]:
        """Newest first. `cursor` is the last id of the previous page. The jobs' `params` are the
        summary of summary.py (bulky values elided). Served from per-status and per-kind indexes:
        a page costs what it returns, however long the tenant's history."""

    @abc.abstractmethod
    def queue_position(self, job: JobRecord) -> int | None:
        """1-based position among queued jobs of the same kind; None unless queued."""

    def queue_positions(self, jobs: list[JobRecord]) -> list[int | None]:
        """queue_position of each (one round trip where the store allows)."""
        return [self.queue_position(j) for j in jobs]

    @abc.abstractmethod
    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Queued -> canceled at once; running -> cancel_requested; final: unchanged."""

    @abc.abstractmethod
    def wait_for_change(self, job_id: str, version: int, timeout: float) -> JobRecord | None:
        """Block until the job's version exceeds `version` or the timeout passes."""

    @abc.abstractmethod
    def versions(self, job_ids: list[str]) -> dict[str, tuple[int, str]]:
        """{id: (version, status)} of the jobs that exist (the API's waiters re-check with it)."""

    @abc.abstractmethod
    def put_upload(self, upload: UploadRecord) -> None: ...

    @abc.abstractmethod
    def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    # --- worker side ---
    @abc.abstractmethod
    def claim(self, job_id: str, worker: str, lease_s: float) -> Claim:
        """Atomically move a queued job to running (attempt + 1) under a lease."""

    @abc.abstractmethod
    def heartbeat(self, job_id: str, attempt: int, lease_s: float, *,
                  progress: float | None = None, stage: str | None = None, result: dict | None = None,
                  extra: dict[str, Any] | None = None) -> bool:
        """Renew the lease (and optionally report progress) while this attempt owns the job.
        `result` (with `progress` only): the partial result of a running job (a training's
        per-epoch history), replaced by the final one at `finish`. `extra`: other JobRecord
        fields the worker owns (EXTRA_FIELDS: logs, metrics) written with the beat.
        Returns True when the job should stop: cancel requested, or the attempt lost ownership."""

    def should_stop(self, job_id: str, attempt: int) -> bool:
        """A cheap read, done at every denoising step: cancel requested or ownership lost."""
        job = self.get_job(job_id)
        return job is None or job.status != RUNNING or job.attempt != attempt or job.cancel_requested

    @abc.abstractmethod
    def finish(self, job_id: str, attempt: int, status: str, *, result: dict | None = None,
               error: dict | None = None, model_profile: str | None = None,
               extra: dict[str, Any] | None = None) -> JobRecord | None:
        """Move this attempt's running job to a final state. None if it no longer owns it.
        Without a `result`, the partial result the attempt reported (heartbeat) stays.
        `extra`: as for heartbeat (logs, metrics, weights_fingerprint)."""

    @abc.abstractmethod
    def reap_expired(self, now: float | None = None) -> list[str]:
        """Re-queue running jobs whose lease expired (or fail them with `worker_lost` after
        max_attempts). Returns the ids re-queued, for the caller to dispatch again."""

    @abc.abstractmethod
    def next_queued(self, kinds: list[str] | None = None) -> str | None:
        """Oldest queued job id (embedded runner; the Celery path gets ids from messages)."""

    @abc.abstractmethod
    def queue_depth(self, kind: str) -> int: ...

    @abc.abstractmethod
    def queued_ids(self, kind: str, limit: int) -> list[str]:
        """The oldest queued job ids of a kind (dynamic batching looks for partners here)."""

    def unsent_queued(self, kind: str, older_than_s: float, limit: int = 50) -> list[str]:
        """Queued jobs whose queue message may never have been sent (the broker failed right
        after the job was stored): those not dispatched for `older_than_s`, each handed to one
        caller per period. Embedded mode has no messages: nothing to resend."""
        return []

    def mark_dispatched(self, job_id: str, ttl_s: float) -> None:
        """Record that a queue message for the job was just sent."""

    @abc.abstractmethod
    def active_jobs(self, tenant: str) -> int:
        """Queued plus running jobs of a tenant (the concurrent-job quota)."""

    # --- webhook outbox: transitions into a subscribed state enqueue a delivery atomically ---
    @abc.abstractmethod
    def claim_due_webhooks(self, limit: int = 20) -> list[tuple[str, str]]:
        """(job id, event) pairs due now; each is handed to exactly one caller."""

    @abc.abstractmethod
    def schedule_webhook(self, job_id: str, event: str, delay_s: float) -> None:
        """Put a delivery back for a retry."""

    @abc.abstractmethod
    def record_webhook(self, job_id: str, event: str, state: dict[str, Any]) -> None:
        """Delivery state, shown on the job."""

    def webhook_snapshot(self, job_id: str, event: str) -> JobRecord | None:
        """The job as it was when it entered `event` (written atomically with the transition
        that enqueued the delivery): the payload of every attempt of that delivery."""
        return None

    def drop_webhook_snapshot(self, job_id: str, event: str) -> None:
        """Forget the snapshot once its delivery is over (delivered or given up)."""

    # --- tenant-owned resources made by jobs (tuned video models, anomaly models) ---
    @abc.abstractmethod
    def put_resource(self, kind: str, resource_id: str, tenant: str, doc: dict[str, Any]) -> None:
        """Create or replace; kept until deleted."""

    @abc.abstractmethod
    def get_resource(self, kind: str, resource_id: str) -> dict[str, Any] | None:
        """The doc with `id` and `tenant` added, or None."""

    @abc.abstractmethod
    def list_resources(self, kind: str, tenant: str, cursor: str | None = None,
                       limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first (ids are time-sortable); with `cursor`, only ids older than it; at most
        `limit` of them (all without)."""

    @abc.abstractmethod
    def touch_resource(self, kind: str, resource_id: str) -> None:
        """A job used the resource now (unused ones are deleted after VISIONJOBS_ARTIFACT_IDLE_S)."""

    @abc.abstractmethod
    def idle_resources(self, older_than_s: float, limit: int = 100) -> list[tuple[str, str]]:
        """(kind, id) of resources neither made nor used for `older_than_s`; each handed to one caller."""

    # --- stored-bytes quotas: per-tenant ledgers of what each item keeps stored, until its time ends ---
    @abc.abstractmethod
    def charge_bytes(self, tenant: str, ledger: str, item: str, nbytes: int, ttl_s: float,
                     limit: int) -> tuple[bool, int, float]:
        """Record that `item` keeps `nbytes` stored for `ttl_s`, unless the tenant's live entries
        in `ledger` plus these would pass `limit` (0: no limit). Returns (accepted, bytes used
        before this item, seconds until the oldest entry's time ends)."""

    @abc.abstractmethod
    def bytes_used(self, tenant: str, ledger: str) -> int:
        """The tenant's bytes in `ledger` (put_resource with `stored_bytes` in the doc adds to
        ARTIFACTS until delete_resource)."""

    @abc.abstractmethod
    def release_bytes(self, tenant: str, ledger: str, item: str) -> None:
        """The item's bytes are gone before its time ended."""

    # --- retention of bytes ---
    @abc.abstractmethod
    def claim_due_purges(self, limit: int = 100) -> list[str]:
        """Object keys and prefixes (ending '/') whose retention ended: an expired upload's object,
        a final job's outputs `jobs/<id>/`. Scheduled by the same write that sets the record's
        expiry (put_upload, the final transitions); each handed to one caller."""

    @abc.abstractmethod
    def update_resource(self, kind: str, resource_id: str, tenant: str, doc: dict[str, Any]) -> bool:
        """Replace the doc only while the resource exists (a write racing a delete never brings
        it back). False when it is gone."""

    @abc.abstractmethod
    def delete_resource(self, kind: str, resource_id: str) -> bool: ...

    # --- what live workers can do (so the API can refuse what no worker could run) ---
    @abc.abstractmethod
    def put_capabilities(self, kind: str, worker: str, caps: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def get_capabilities(self, kind: str, max_age_s: float = 120.0) -> list[dict[str, Any]]:
        """Capabilities reported by workers of `kind` within the last `max_age_s` seconds."""

    # --- per-kind histograms of the jobs' time split (metrics), for /metrics ---
    def observe_job_metrics(self, kind: str, metrics: dict[str, float]) -> None:
        """Count a finished job's `metrics` (queue_s, load_s, run_s, upload_s) into the per-kind
        histograms every API process exposes (kept in the store: workers have no HTTP port)."""

    def job_metric_histograms(self) -> dict[tuple[str, str], tuple[list[int], float, int]]:
        """(kind, metric) -> (count per bucket of METRIC_BUCKETS, the last one +Inf; sum; count)."""
        return {}

    # --- operations ---
    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable when the backing store cannot be reached."""

    @abc.abstractmethod
    def check_writable(self) -> None:
        """Raise StoreFull when the store refuses a small write now (readiness)."""

    @abc.abstractmethod
    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) -> number of known jobs, for /metrics."""

    def release(self, job_id: str, attempt: int) -> bool:
        """Hand a running attempt's job back to the queue (a worker stopping): queued again at
        once, with one more attempt allowed so the hand-back costs none. False when the attempt no
        longer owns the job, or a cancel is pending (the lease then decides). Default: not
        supported, the lease decides."""
        return False

    @abc.abstractmethod
    def queue_stats(self, kinds: list[str]) -> dict[str, "QueueStats"]:
        """kind -> queue depth, oldest queued age and busy workers, for /metrics (autoscaling)."""

    def close(self) -> None:  # pragma: no cover - optional
        pass

    def open_async(self, *, pool_size: int = 64, cpu=None):
        """The asyncio twin for the API's request path (an AsyncJobStore, aio.py) on the same
        data, with its own connections: `pool_size` Redis connections, `cpu` an executor for
        heavy decoding. Call it inside the event loop that will use it."""
        raise NotImplementedError


def wire_bytes(job: JobRecord) -> int:
    """Bytes the job took in the store when it was read (0 when unknown): the API renders jobs
    above a threshold off the event loop."""
    return getattr(job, "_wire_bytes", 0)
