"""Redis job store (distributed mode), sync: workers, the reaper and the webhook deliverer.

Each method drives one operation of redis_ops.py (the same generators AsyncRedisJobStore drives
for the API's request path); transitions are the Lua scripts of redis_lua.py.
"""
from __future__ import annotations

import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service.store import redis_lua
from service.store.base import JobStore, StoreFull, StoreUnavailable
from service.store.connection import RedisTarget, as_target
from service.store.redis_ops import Batch, Call, Compute, RedisOps, Script

# Connection handling: fail fast, so the API answers 503 within a few seconds while Redis is down
# or unreachable (never hangs on a dead socket), and recover on the next call once it is back.
CONNECT_TIMEOUT_S = 2.0   # a LAN Redis connects in milliseconds
SOCKET_TIMEOUT_S = 5.0    # every command is short: Lua transitions, single reads
BLOCK_SLICE_S = 2.0       # blocking XREADs are cut into slices well under SOCKET_TIMEOUT_S
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError (AOF replay) is a ConnectionError
# Redis refusing writes: at maxmemory under noeviction (OOM, also from inside a script), failed
# snapshots with stop-writes-on-bgsave-error (MISCONF), a replica (READONLY), too few replicas
_REFUSALS = ("OOM", "MISCONF", "READONLY", "NOREPLICAS", "NOTENOUGHREPLICAS")


def refusal(exc: redis.ResponseError) -> StoreFull | None:
    """The StoreFull an error of Redis refusing writes stands for (None: another error)."""
    text = str(exc)  # redis-py drops the OOM / READONLY prefix for the exceptions it names
    if (isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError))
            or text.startswith(_REFUSALS) or "command not allowed when used memory" in text):
        return StoreFull(f"redis refuses writes: {text.split(chr(10))[0][:200]}")
    return None


def run_sync(op, client, scripts) -> tuple[object, int]:
    """Drive one operation against a redis-py client. Returns (result, commands sent)."""
    sent = 0
    try:
        step = next(op)
        while True:
            if isinstance(step, Call):
                answer = getattr(client, step.name)(*step.args, **(step.kwargs or {}))
                sent += 1
            elif isinstance(step, Script):
                answer = scripts[step.name](keys=[], args=list(step.args))
                sent += 1
            elif isinstance(step, Batch):
                pipe = client.pipeline(transaction=False)
                for c in step.calls:
                    getattr(pipe, c.name)(*c.args, **(c.kwargs or {}))
                answer = pipe.execute()
                sent += len(step.calls)
            elif isinstance(step, Compute):
                answer = step.fn(*step.args)
            else:  # pragma: no cover - a programming error in an operation
                raise TypeError(f"unknown step {step!r}")
            step = op.send(answer)
    except StopIteration as done:
        return done.value, sent


class RedisJobStore(JobStore):
    def __init__(self, url: RedisTarget | str, *, prefix: str = "vj:", retention_s: int = 7 * 86400,
                 wait_replicas: int = 1, wait_timeout_ms: int = 1000):
        # One quick retry on a fresh connection covers pooled sockets a Redis restart left dead;
        # redis-py's default (10 retries, backoff up to 1 s) would hold a request for seconds.
        # Timeouts are not retried: the command may have run (a Lua transition twice is wrong),
        # and a silent Redis then costs one SOCKET_TIMEOUT_S, not several.
        self.target = as_target(url)
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self.r = self.target.sync_client(decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                         socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30,
                                         retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1,
                                                     supported_errors=(redis.ConnectionError,)))
        self.p = prefix
        self.retention_s = retention_s
        self.ops = RedisOps(prefix, retention_s)
        self._scripts = {name: self.r.register_script(src) for name, src in redis_lua.SCRIPTS.items()}
        self.commands_sent = 0  # Redis commands sent so far (tests check what a page costs)

    def _do(self, op):
        try:
            result, sent = run_sync(op, self.r, self._scripts)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            raise (refusal(exc) or exc) from exc
        self.commands_sent += sent
        return result

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            raise (refusal(exc) or exc) from exc

    def open_async(self, *, pool_size: int = 64, cpu=None):
        from service.store.redis_async import AsyncRedisJobStore

        return AsyncRedisJobStore(self.target, prefix=self.p, retention_s=self.retention_s, pool_size=pool_size,
                                  cpu=cpu, wait_replicas=self.wait_replicas, wait_timeout_ms=self.wait_timeout_ms)

    # --- API side ---
    def create_job(self, job, idempotency_key=None, fingerprint=""):
        return self._do(self.ops.create_job(job, idempotency_key, fingerprint))

    def find_idempotent(self, tenant, idempotency_key, fingerprint=""):
        return self._do(self.ops.find_idempotent(tenant, idempotency_key, fingerprint))

    def discard_job(self, job_id):
        return self._do(self.ops.discard_job(job_id))

    def get_job(self, job_id):
        return self._do(self.ops.get_job(job_id))

    def list_jobs(self, tenant, *, kind=None, status=None, cursor=None, limit=20):
        return self._do(self.ops.list_jobs(tenant, kind=kind, status=status, cursor=cursor, limit=limit))

    def queue_position(self, job):
        return self._do(self.ops.queue_position(job))

    def queue_positions(self, jobs):
        return self._do(self.ops.queue_positions(jobs))

    def request_cancel(self, job_id):
        return self._do(self.ops.request_cancel(job_id))

    def versions(self, job_ids):
        return self._do(self.ops.versions(list(job_ids)))

    def wait_for_change(self, job_id, version, timeout):
        """Blocks this thread (sync callers only; the API waits through its ChangeHub)."""
        stream = f"{self.p}events:{job_id}"
        deadline = time.monotonic() + timeout
        while True:
            latest = self._call(self.r.xrevrange, stream, count=1)
            last_id = latest[0][0] if latest else "0-0"
            job = self.get_job(job_id)
            if job is None or job.version > version:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return job
            # Anything written after `last_id` wakes us: no lost wake-up between the two reads.
            # Blocks in slices, so the socket timeout (a dead Redis is noticed) stays short.
            self._call(self.r.xread, {stream: last_id}, count=1,
                       block=max(1, int(min(remaining, BLOCK_SLICE_S) * 1000)))

    def put_upload(self, upload):
        self._do(self.ops.put_upload(upload))

    def get_upload(self, upload_id):
        return self._do(self.ops.get_upload(upload_id))

    # --- worker side ---
    def claim(self, job_id, worker, lease_s):
        return self._do(self.ops.claim(job_id, worker, lease_s))

    def heartbeat(self, job_id, attempt, lease_s, *, progress=None, stage=None, result=None, extra=None):
        return self._do(self.ops.heartbeat(job_id, attempt, lease_s, progress=progress, stage=stage, result=result,
                                           extra=extra))

    def should_stop(self, job_id, attempt):
        return self._do(self.ops.should_stop(job_id, attempt))

    def finish(self, job_id, attempt, status, *, result=None, error=None, model_profile=None, extra=None):
        return self._do(self.ops.finish(job_id, attempt, status, result=result, error=error,
                                        model_profile=model_profile, extra=extra))

    def release(self, job_id, attempt):
        return self._do(self.ops.release(job_id, attempt))

    def reap_expired(self, now=None, limit: int = 100):
        return self._do(self.ops.reap_expired(limit))

    def next_queued(self, kinds=None):
        return self._do(self.ops.next_queued(kinds))

    def mark_dispatched(self, job_id, ttl_s):
        self._do(self.ops.mark_dispatched(job_id, ttl_s))

    def unsent_queued(self, kind, older_than_s, limit=50):
        return self._do(self.ops.unsent_queued(kind, older_than_s, limit))

    def queued_ids(self, kind, limit):
        return self._do(self.ops.queued_ids(kind, limit))

    def active_jobs(self, tenant):
        return self._do(self.ops.active_jobs(tenant))

    def queue_depth(self, kind: str) -> int:
        return self._do(self.ops.queue_depth(kind))

    def claim_due_webhooks(self, limit=20):
        return self._do(self.ops.claim_due_webhooks(limit))

    def schedule_webhook(self, job_id, event, delay_s):
        self._do(self.ops.schedule_webhook(job_id, event, delay_s))

    def webhook_snapshot(self, job_id, event):
        return self._do(self.ops.webhook_snapshot(job_id, event))

    def drop_webhook_snapshot(self, job_id, event):
        return self._do(self.ops.drop_webhook_snapshot(job_id, event))

    def observe_job_metrics(self, kind, metrics):
        return self._do(self.ops.observe_job_metrics(kind, metrics))

    def job_metric_histograms(self):
        return self._do(self.ops.job_metric_histograms())

    def record_webhook(self, job_id, event, state):
        self._do(self.ops.record_webhook(job_id, event, state))

    def put_resource(self, kind, resource_id, tenant, doc):
        self._do(self.ops.put_resource(kind, resource_id, tenant, doc))

    def get_resource(self, kind, resource_id):
        return self._do(self.ops.get_resource(kind, resource_id))

    def list_resources(self, kind, tenant, cursor=None, limit=None):
        return self._do(self.ops.list_resources(kind, tenant, cursor, limit))

    def touch_resource(self, kind, resource_id):
        self._do(self.ops.touch_resource(kind, resource_id))

    def idle_resources(self, older_than_s, limit=100):
        return self._do(self.ops.idle_resources(older_than_s, limit))

    def claim_due_purges(self, limit=100):
        return self._do(self.ops.claim_due_purges(limit))

    def check_writable(self):
        self._do(self.ops.check_writable())

    def charge_bytes(self, tenant, ledger, item, nbytes, ttl_s, limit):
        return self._do(self.ops.charge_bytes(tenant, ledger, item, nbytes, ttl_s, limit))

    def bytes_used(self, tenant, ledger):
        return self._do(self.ops.bytes_used(tenant, ledger))

    def release_bytes(self, tenant, ledger, item):
        return self._do(self.ops.release_bytes(tenant, ledger, item))

    def update_resource(self, kind, resource_id, tenant, doc):
        return self._do(self.ops.update_resource(kind, resource_id, tenant, doc))

    def delete_resource(self, kind, resource_id):
        return self._do(self.ops.delete_resource(kind, resource_id))

    def put_capabilities(self, kind, worker, caps):
        self._do(self.ops.put_capabilities(kind, worker, caps))

    def get_capabilities(self, kind, max_age_s=120.0):
        return self._do(self.ops.get_capabilities(kind, max_age_s))

    # --- operations ---
    def ping(self):
        self._do(self.ops.ping())

    def counts(self):
        return self._do(self.ops.counts())

    def queue_stats(self, kinds):
        return self._do(self.ops.queue_stats(list(kinds)))

    def close(self):
        self.r.close()
