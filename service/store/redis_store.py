"""Redis job store (distributed mode). Transitions are Lua scripts (redis_lua.py)."""
from __future__ import annotations

import json
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service.store import redis_lua
from service.store.base import (
    ALL_STATES, QUEUED, Claim, JobRecord, JobStore, StoreUnavailable, UploadRecord,
)

WORKER_LOST = json.dumps({"code": "worker_lost",
                          "message": "the worker running this job stopped answering on every attempt"})
_JSON_FIELDS = ("params", "result", "error", "webhook_deliveries")
_FLOAT_FIELDS = ("progress", "created_at", "started_at", "finished_at")
_INT_FIELDS = ("attempt", "max_attempts", "version")
# Connection handling: fail fast, so the API answers 503 within a few seconds while Redis is down
# or unreachable (never hangs on a dead socket), and recover on the next call once it is back.
CONNECT_TIMEOUT_S = 2.0   # a LAN Redis connects in milliseconds
SOCKET_TIMEOUT_S = 5.0    # every command is short: Lua transitions, single reads
BLOCK_SLICE_S = 2.0       # blocking XREADs are cut into slices well under SOCKET_TIMEOUT_S
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError (AOF replay) is a ConnectionError


def _encode(job: JobRecord) -> list[str]:
    flat: list[str] = []
    for name, value in job.to_dict().items():
        if value is None:
            continue
        if name in _JSON_FIELDS:
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        flat += [name, str(value)]
    return flat


def _decode(raw: dict[str, str]) -> JobRecord:
    data: dict = {}
    for name, value in raw.items():
        if name in _JSON_FIELDS:
            data[name] = json.loads(value) if value else None
        elif name in _FLOAT_FIELDS:
            data[name] = float(value)
        elif name in _INT_FIELDS:
            data[name] = int(value)
        elif name == "cancel_requested":
            data[name] = value == "1"
        elif name == "lease_until":
            continue
        else:
            data[name] = value or None
    return JobRecord(**data)


class RedisJobStore(JobStore):
    def __init__(self, url: str, *, prefix: str = "vj:", retention_s: int = 7 * 86400):
        # One quick retry on a fresh connection covers pooled sockets a Redis restart left dead;
        # redis-py's default (10 retries, backoff up to 1 s) would hold a request for seconds.
        # Timeouts are not retried: the command may have run (a Lua transition twice is wrong),
        # and a silent Redis then costs one SOCKET_TIMEOUT_S, not several.
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                      socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30,
                                      retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1,
                                                  supported_errors=(redis.ConnectionError,)))
        self.p = prefix
        self.retention_s = retention_s
        self._scripts = {name: self.r.register_script(getattr(redis_lua, name))
                         for name in ("CREATE", "CLAIM", "HEARTBEAT", "FINISH", "CANCEL", "REAP")}

    def _run(self, name: str, *args):
        try:
            return self._scripts[name](keys=[], args=[self.p, *args])
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc

    # --- API side ---
    def create_job(self, job, idempotency_key=None):
        created, job_id = self._run("CREATE", job.id, job.tenant, job.kind, int(job.created_at * 1000),
                                    idempotency_key or "", self.retention_s, *_encode(job))
        return self.get_job(job_id), bool(created)

    def get_job(self, job_id):
        raw = self._call(self.r.hgetall, f"{self.p}job:{job_id}")
        return _decode(raw) if raw else None

    def list_jobs(self, tenant, *, kind=None, status=None, cursor=None, limit=20):
        index = f"{self.p}tenant:{tenant}"
        out: list[JobRecord] = []
        upper = f"({cursor}" if cursor else "+"
        while len(out) < limit:
            ids = self._call(self.r.zrevrangebylex, index, upper, "-", start=0, num=max(limit * 2, 50))
            if not ids:
                return out, None
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(f"{self.p}job:{job_id}")
            for job_id, raw in zip(ids, self._call(pipe.execute)):
                upper = f"({job_id}"
                if not raw:  # expired by retention: drop from the index lazily
                    self.r.zrem(index, job_id)
                    continue
                job = _decode(raw)
                if (kind and job.kind != kind) or (status and job.status != status):
                    continue
                out.append(job)
                if len(out) == limit:
                    return out, job.id
        return out, None

    def queue_position(self, job):
        if job.status != QUEUED:
            return None
        rank = self._call(self.r.zrank, f"{self.p}queue:{job.kind}", job.id)
        return None if rank is None else rank + 1

    def request_cancel(self, job_id):
        status = self._run("CANCEL", job_id, self.retention_s)
        return self.get_job(job_id) if status else None

    def wait_for_change(self, job_id, version, timeout):
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
        self._call(self.r.set, f"{self.p}upload:{upload.id}", json.dumps(upload.to_dict()), ex=self.retention_s)

    def get_upload(self, upload_id):
        raw = self._call(self.r.get, f"{self.p}upload:{upload_id}")
        return UploadRecord(**json.loads(raw)) if raw else None

    # --- worker side ---
    def claim(self, job_id, worker, lease_s):
        reason = self._run("CLAIM", job_id, worker, lease_s)
        return Claim(self.get_job(job_id) if reason == "claimed" else None, reason)

    def heartbeat(self, job_id, attempt, lease_s, *, progress=None, stage=None, result=None):
        return bool(self._run("HEARTBEAT", job_id, attempt, lease_s,
                              "" if progress is None else repr(float(progress)), stage or "",
                              "" if result is None else json.dumps(result)))

    def should_stop(self, job_id, attempt):
        status, current, cancel = self._call(self.r.hmget, f"{self.p}job:{job_id}", "status", "attempt",
                                             "cancel_requested")
        return status != "running" or current != str(attempt) or cancel == "1"

    def finish(self, job_id, attempt, status, *, result=None, error=None, model_profile=None):
        done = self._run("FINISH", job_id, attempt, status, json.dumps(result) if result is not None else "",
                         json.dumps(error) if error is not None else "", self.retention_s, model_profile or "")
        return self.get_job(job_id) if done else None

    def reap_expired(self, now=None, limit: int = 100):
        return list(self._run("REAP", self.retention_s, limit, WORKER_LOST))

    def next_queued(self, kinds=None):
        best: tuple[float, str] | None = None
        for kind in kinds or []:
            head = self._call(self.r.zrange, f"{self.p}queue:{kind}", 0, 0, withscores=True)
            if head and (best is None or head[0][1] < best[0]):
                best = (head[0][1], head[0][0])
        return best[1] if best else None

    def mark_dispatched(self, job_id, ttl_s):
        self._call(self.r.set, f"{self.p}sent:{job_id}", 1, ex=max(1, int(ttl_s)))

    def unsent_queued(self, kind, older_than_s, limit=50):
        cutoff = time.time() - older_than_s
        out = []
        for job_id, created_ms in self._call(self.r.zrange, f"{self.p}queue:{kind}", 0, limit - 1, withscores=True):
            if created_ms / 1000 > cutoff:
                break  # the queue is ordered by creation: the rest are younger
            # SET NX: one reaper per period wins each job, so one message is re-sent, not one per process
            if self._call(self.r.set, f"{self.p}sent:{job_id}", 1, nx=True, ex=max(1, int(older_than_s))):
                out.append(job_id)
        return out

    def queued_ids(self, kind, limit):
        return self._call(self.r.zrange, f"{self.p}queue:{kind}", 0, limit - 1)

    def active_jobs(self, tenant):
        return self._call(self.r.scard, f"{self.p}active:{tenant}")

    def queue_depth(self, kind: str) -> int:
        return self._call(self.r.zcard, f"{self.p}queue:{kind}")

    def claim_due_webhooks(self, limit=20):
        due = self._call(self.r.zrangebyscore, f"{self.p}webhooks", "-inf", time.time(), start=0, num=limit)
        mine = [m for m in due if self._call(self.r.zrem, f"{self.p}webhooks", m)]  # ZREM decides who delivers
        return [tuple(m.rsplit("|", 1)) for m in mine]

    def schedule_webhook(self, job_id, event, delay_s):
        self._call(self.r.zadd, f"{self.p}webhooks", {f"{job_id}|{event}": time.time() + delay_s})

    def record_webhook(self, job_id, event, state):
        key = f"{self.p}job:{job_id}"
        raw = self._call(self.r.hget, key, "webhook_deliveries")
        deliveries = json.loads(raw) if raw else {}
        deliveries[event] = state
        if self._call(self.r.exists, key):
            self._call(self.r.hset, key, "webhook_deliveries", json.dumps(deliveries))

    def put_resource(self, kind, resource_id, tenant, doc):
        pipe = self.r.pipeline()
        pipe.set(f"{self.p}res:{kind}:{resource_id}", json.dumps({**doc, "id": resource_id, "tenant": tenant}))
        pipe.zadd(f"{self.p}res:{kind}:tenant:{tenant}", {resource_id: 0})
        self._call(pipe.execute)

    def get_resource(self, kind, resource_id):
        raw = self._call(self.r.get, f"{self.p}res:{kind}:{resource_id}")
        return json.loads(raw) if raw else None

    def list_resources(self, kind, tenant):
        ids = self._call(self.r.zrevrangebylex, f"{self.p}res:{kind}:tenant:{tenant}", "+", "-")
        docs = [self.get_resource(kind, i) for i in ids]
        return [d for d in docs if d is not None]

    def delete_resource(self, kind, resource_id):
        doc = self.get_resource(kind, resource_id)
        if doc is None:
            return False
        pipe = self.r.pipeline()
        pipe.delete(f"{self.p}res:{kind}:{resource_id}")
        pipe.zrem(f"{self.p}res:{kind}:tenant:{doc['tenant']}", resource_id)
        self._call(pipe.execute)
        return True

    def put_capabilities(self, kind, worker, caps):
        self._call(self.r.hset, f"{self.p}caps:{kind}", worker, json.dumps({**caps, "seen_at": time.time()}))

    def get_capabilities(self, kind, max_age_s=120.0):
        raw = self._call(self.r.hgetall, f"{self.p}caps:{kind}")
        fresh = [json.loads(v) for v in raw.values()]
        return [c for c in fresh if c.get("seen_at", 0) > time.time() - max_age_s]

    # --- operations ---
    def ping(self):
        try:
            self.r.ping()
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc

    def counts(self):
        raw = self._call(self.r.hgetall, f"{self.p}counts")
        out = {}
        for field, value in raw.items():
            kind, _, status = field.rpartition("|")
            if status in ALL_STATES:
                out[(kind, status)] = int(value)
        return out

    def close(self):
        self.r.close()
