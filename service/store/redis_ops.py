"""Every Redis job-store operation, written once without I/O, run by a sync and an async driver.

An operation is a generator. It yields what it needs and receives the answer:

    Call("hgetall", key)          one command: a redis-py client method and its arguments
    Batch([Call, ...])            several commands in one round trip (a pipeline without MULTI)
    Script("CLAIM", (prefix, ...)) a transition script of redis_lua.py; every state change is one
    Compute(fn, (args...), heavy) CPU work on the answers; `heavy` work runs off the event loop

and returns the operation's result. RedisJobStore (redis-py, for workers, the reaper and the
webhook deliverer) and AsyncRedisJobStore (redis.asyncio, the API's request path) drive the same
generators, so both send the same commands and run the same registered scripts.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from service.store.base import (
    ALL_STATES, JOB_METRICS, METRIC_BUCKETS, QUEUED, Claim, IdempotencyMismatch, JobRecord, QueueStats, UploadRecord,
    bucket_of, check_extra,
)
from service.store.redis_resources import ResourceOps
from service.store.redis_steps import Batch, Call, Compute, Script, call  # noqa: F401 - the drivers import them here
from service.store.summary import summarize_params

WORKER_LOST = json.dumps({"code": "worker_lost",
                          "message": "the worker running this job stopped answering on every attempt"})
_JSON_FIELDS = ("params", "result", "error", "webhook_deliveries", "logs", "metrics")
_FLOAT_FIELDS = ("progress", "created_at", "started_at", "finished_at")
_INT_FIELDS = ("attempt", "max_attempts", "version")
_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))
# a list page reads every field but the params, and the summary written next to them
# (nor the logs: GET /v1/jobs/{id}/logs and the event stream have them)
LIST_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord) if f.name not in ("params", "logs")) + ("params_summary",)
# what clients see of a job (status reads, waits): the worker-side fields keep their defaults
VIEW_FIELDS = ("id", "tenant", "kind", "params", "status", "progress", "stage", "attempt", "created_at", "started_at",
               "finished_at", "error", "result", "model_profile", "version", "webhook_deliveries", "logs", "metrics",
               "weights_fingerprint")
# the key's value is "<job id>|<fingerprint>" (a bare id: made before fingerprints)
_FREE_KEY = ("local v = redis.call('GET', KEYS[1]) if v == ARGV[1] or (v and string.sub(v, 1, #ARGV[1] + 1) == "
             "ARGV[1] .. '|') then return redis.call('DEL', KEYS[1]) end return 0")
HEAVY_BYTES = 64 * 1024  # decoding more than this runs off the event loop (async driver)
VERSIONS_CHUNK = 500     # versions(): job ids per pipeline


def encode(job: JobRecord) -> list[str]:
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


def decode(raw: dict[str, str], wire: int | None = None) -> JobRecord:
    data: dict = {}
    for name, value in raw.items():
        if name not in _RECORD_FIELDS:
            continue  # lease_until, params_summary
        if name in _JSON_FIELDS:
            data[name] = json.loads(value) if value else None
        elif name in _FLOAT_FIELDS:
            data[name] = float(value)
        elif name in _INT_FIELDS:
            data[name] = int(value)
        elif name == "cancel_requested":
            data[name] = value == "1"
        else:
            data[name] = value or None
    job = JobRecord(**data)
    job._wire_bytes = _wire(raw) if wire is None else wire  # a size hint for the API (see base.wire_bytes)
    return job


def _wire(raw: dict[str, str]) -> int:
    return sum(map(len, raw.values()))


def _pairs(extra: dict | None) -> list[str]:
    """`extra` fields as HSET arguments (field, encoded value, ...)."""
    flat: list[str] = []
    for name, value in check_extra(extra).items():
        flat += [name, json.dumps(value) if name in _JSON_FIELDS else str(value)]
    return flat


def _decode_listed(rows: list[dict[str, str]]) -> list[JobRecord]:
    out = []
    for raw in rows:
        raw = dict(raw)
        raw["params"] = raw.pop("params_summary", None) or "{}"
        out.append(decode(raw))
    return out


def _same_request(job_id: str, used: str, fingerprint: str) -> None:
    if used and fingerprint and used != fingerprint:
        raise IdempotencyMismatch(job_id)


class RedisOps(ResourceOps):
    """Key layout under `prefix`: job:<id> (hash), events:<id> (stream), queue:<kind> (zset by
    creation), leases (zset by lease end), tenant:<t> (zset, lex by id) and its listing indexes
    tenant:<t>:k:<kind>, :s:<status>, :ks:<kind>:<status>, active:<t> (set), counts (hash),
    upload:<id>, res:<kind>:<id>, caps:<kind>, webhooks (zset by due time), channel `changes`."""

    def __init__(self, prefix: str = "vj:", retention_s: int = 7 * 86400):
        self.p, self.retention_s = prefix, retention_s
        self.changes_channel = f"{prefix}changes"

    def job_key(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def index_key(self, tenant: str, kind: str | None, status: str | None) -> str:
        base = f"{self.p}tenant:{tenant}"
        if kind and status:
            return f"{base}:ks:{kind}:{status}"
        if status:
            return f"{base}:s:{status}"
        if kind:
            return f"{base}:k:{kind}"
        return base

    # --- API side ---
    def create_job(self, job: JobRecord, idempotency_key: str | None = None, fingerprint: str = ""):
        fields = encode(job) + ["params_summary", json.dumps(summarize_params(job.params))]
        created, job_id, *used = yield Script("CREATE", (self.p, job.id, job.tenant, job.kind,
                                                         int(job.created_at * 1000), idempotency_key or "",
                                                         self.retention_s, fingerprint, *fields))
        _same_request(job_id, used[0] if used else "", fingerprint)
        return (yield from self.get_job(job_id)), bool(created)

    def find_idempotent(self, tenant: str, idempotency_key: str, fingerprint: str = ""):
        value = yield call("get", f"{self.p}idem:{tenant}:{idempotency_key}")
        if not value:
            return None
        job_id, _, used = value.partition("|")
        job = yield from self.get_job(job_id)
        if job is not None:
            _same_request(job_id, used, fingerprint)
        return job

    def discard_job(self, job_id: str):
        return bool((yield Script("DISCARD", (self.p, job_id))))

    def get_job(self, job_id: str):
        raw = yield call("hgetall", self.job_key(job_id))
        if not raw:
            return None
        wire = _wire(raw)
        return (yield Compute(decode, (raw, wire), heavy=wire > HEAVY_BYTES))

    def read_job(self, job_id: str):
        """The job as clients see it (VIEW_FIELDS; the worker-side fields keep their defaults):
        status reads and waits, about a third fewer bytes to parse than get_job."""
        values = yield call("hmget", self.job_key(job_id), VIEW_FIELDS)
        if values[0] is None:
            return None
        raw = {k: v for k, v in zip(VIEW_FIELDS, values) if v is not None}
        wire = _wire(raw)
        return (yield Compute(decode, (raw, wire), heavy=wire > HEAVY_BYTES))

    def list_jobs(self, tenant: str, *, kind: str | None = None, status: str | None = None,
                  cursor: str | None = None, limit: int = 20):
        """One index read and one pipelined read of `limit` hashes per page (more only where
        retention expired entries the index still holds): the cost does not grow with history."""
        index, everything = self.index_key(tenant, kind, status), self.index_key(tenant, None, None)
        out: list[JobRecord] = []
        upper = f"({cursor}" if cursor else "+"
        while True:
            want = limit - len(out)
            ids = yield call("zrevrangebylex", index, upper, "-", start=0, num=want + 1)
            page, more = ids[:want], len(ids) > want
            if not page:
                return out, None
            rows = yield Batch(tuple(call("hmget", self.job_key(i), LIST_FIELDS) for i in page))
            listed, legacy, gone = [], [], []
            for job_id, values in zip(page, rows):
                raw = {k: v for k, v in zip(LIST_FIELDS, values) if v is not None}
                if "id" not in raw:
                    gone.append(job_id)  # expired by retention: drop from the indexes lazily
                    continue
                if "params_summary" not in raw:
                    legacy.append(len(listed))  # written before summaries existed
                listed.append(raw)
            if legacy:
                full = yield Batch(tuple(call("hget", self.job_key(listed[i]["id"]), "params") for i in legacy))
                for i, params in zip(legacy, full):
                    listed[i]["params_summary"] = json.dumps(summarize_params(json.loads(params or "{}")))
            if gone:
                yield Batch(tuple(call("zrem", key, *gone) for key in {index, everything}))
            jobs = yield Compute(_decode_listed, (listed,), heavy=sum(map(_wire, listed)) > HEAVY_BYTES)
            # the indexes move inside the transition scripts, so these match; the check only guards
            # entries made before the indexes existed
            out += [j for j in jobs if (not kind or j.kind == kind) and (not status or j.status == status)]
            upper = f"({page[-1]}"
            if len(out) >= limit or not more:
                return out, (out[-1].id if more and out else None)

    def queue_position(self, job: JobRecord):
        if job.status != QUEUED:
            return None
        rank = yield call("zrank", f"{self.p}queue:{job.kind}", job.id)
        return None if rank is None else rank + 1

    def queue_positions(self, jobs: list[JobRecord]):
        queued = [j for j in jobs if j.status == QUEUED]
        ranks = (yield Batch(tuple(call("zrank", f"{self.p}queue:{j.kind}", j.id) for j in queued))) if queued else []
        by_id = {j.id: (None if r is None else r + 1) for j, r in zip(queued, ranks)}
        return [by_id.get(j.id) for j in jobs]

    def request_cancel(self, job_id: str):
        status = yield Script("CANCEL", (self.p, job_id, self.retention_s))
        if not status:
            return None
        return (yield from self.get_job(job_id))

    def versions(self, job_ids: list[str]):
        """{id: (version, status)} for the ids that still exist (the waiters' re-check)."""
        out: dict[str, tuple[int, str]] = {}
        for start in range(0, len(job_ids), VERSIONS_CHUNK):
            chunk = job_ids[start:start + VERSIONS_CHUNK]
            rows = yield Batch(tuple(call("hmget", self.job_key(i), ("version", "status")) for i in chunk))
            for job_id, (version, status) in zip(chunk, rows):
                if version is not None:
                    out[job_id] = (int(version), status or "")
        return out

    def put_upload(self, upload: UploadRecord):
        yield Batch((call("set", f"{self.p}upload:{upload.id}", json.dumps(upload.to_dict()), ex=self.retention_s),
                     call("zadd", f"{self.p}purge", {upload.key: time.time() + self.retention_s})))

    def get_upload(self, upload_id: str):
        raw = yield call("get", f"{self.p}upload:{upload_id}")
        return UploadRecord(**json.loads(raw)) if raw else None

    def active_jobs(self, tenant: str):
        return (yield call("scard", f"{self.p}active:{tenant}"))

    def mark_dispatched(self, job_id: str, ttl_s: float):
        yield call("set", f"{self.p}sent:{job_id}", 1, ex=max(1, int(ttl_s)))

    def mark_replicated(self, job_id: str, ttl_s: float, replicas: int, timeout_ms: int):
        """mark_dispatched, then WAIT on the same connection: WAIT covers what its own connection
        wrote last, and replication is one ordered stream, so the job and its broker message
        (written before) are on `replicas` replicas once it answers that many. Returns the count."""
        _, acked = yield Batch((call("set", f"{self.p}sent:{job_id}", 1, ex=max(1, int(ttl_s))),
                                call("wait", replicas, timeout_ms)))
        return int(acked)

    def connected_replicas(self):
        info = yield call("info", "replication")
        return int(info.get("connected_slaves", 0))

    def withdraw(self, job_id: str, tenant: str, idempotency_key: str | None):
        """A job the API could not make durable: canceled (a worker given its message drops it),
        and its Idempotency-Key freed, so the client's retry makes a new job."""
        yield Script("CANCEL", (self.p, job_id, self.retention_s))
        if idempotency_key:
            yield call("eval", _FREE_KEY, 1, f"{self.p}idem:{tenant}:{idempotency_key}", job_id)

    # --- worker side ---
    def claim(self, job_id: str, worker: str, lease_s: float):
        reason = yield Script("CLAIM", (self.p, job_id, worker, lease_s))
        return Claim((yield from self.get_job(job_id)) if reason == "claimed" else None, reason)

    def release(self, job_id: str, attempt: int):
        return bool((yield Script("RELEASE", (self.p, job_id, attempt))))

    def heartbeat(self, job_id: str, attempt: int, lease_s: float, *, progress=None, stage=None, result=None,
                  extra=None):
        stop = yield Script("HEARTBEAT", (self.p, job_id, attempt, lease_s,
                                          "" if progress is None else repr(float(progress)), stage or "",
                                          "" if result is None else json.dumps(result), *_pairs(extra)))
        return bool(stop)

    def should_stop(self, job_id: str, attempt: int):
        status, current, cancel = yield call("hmget", self.job_key(job_id), ("status", "attempt", "cancel_requested"))
        return status != "running" or current != str(attempt) or cancel == "1"

    def finish(self, job_id: str, attempt: int, status: str, *, result=None, error=None, model_profile=None,
               extra=None):
        done = yield Script("FINISH", (self.p, job_id, attempt, status, json.dumps(result) if result is not None else "",
                                       json.dumps(error) if error is not None else "", self.retention_s,
                                       model_profile or "", *_pairs(extra)))
        if not done:
            return None
        return (yield from self.get_job(job_id))

    def reap_expired(self, limit: int = 100):
        return list((yield Script("REAP", (self.p, self.retention_s, limit, WORKER_LOST))))

    def next_queued(self, kinds: list[str] | None = None):
        kinds = list(kinds or [])
        if not kinds:
            return None
        heads = yield Batch(tuple(call("zrange", f"{self.p}queue:{k}", 0, 0, withscores=True) for k in kinds))
        firsts = [(head[0][1], head[0][0]) for head in heads if head]
        return min(firsts)[1] if firsts else None

    def unsent_queued(self, kind: str, older_than_s: float, limit: int = 50):
        cutoff = time.time() - older_than_s
        out = []
        queued = yield call("zrange", f"{self.p}queue:{kind}", 0, limit - 1, withscores=True)
        for job_id, created_ms in queued:
            if created_ms / 1000 > cutoff:
                break  # the queue is ordered by creation: the rest are younger
            # SET NX: one reaper per period wins each job, so one message is re-sent, not one per process
            if (yield call("set", f"{self.p}sent:{job_id}", 1, nx=True, ex=max(1, int(older_than_s)))):
                out.append(job_id)
        return out

    def queued_ids(self, kind: str, limit: int):
        return (yield call("zrange", f"{self.p}queue:{kind}", 0, limit - 1))

    def queue_depth(self, kind: str):
        return (yield call("zcard", f"{self.p}queue:{kind}"))

    def queue_stats(self, kinds: list[str]):
        """Two round trips plus one per scrape for the running jobs' (kind, worker) pairs."""
        calls = [call("zrange", f"{self.p}queue:{k}", 0, 0, withscores=True) for k in kinds]
        calls += [call("zcard", f"{self.p}queue:{k}") for k in kinds] + [call("zrange", f"{self.p}leases", 0, -1)]
        answers = yield Batch(tuple(calls))
        heads, depths, running = answers[:len(kinds)], answers[len(kinds):-1], answers[-1]
        owners = (yield Batch(tuple(call("hmget", self.job_key(j), ["kind", "worker"]) for j in running))) \
            if running else []
        busy: dict[str, set] = {}
        for kind, worker in owners:
            if kind and worker:
                busy.setdefault(kind, set()).add(worker)
        now = time.time()
        return {k: QueueStats(int(d), max(0.0, now - head[0][1] / 1000) if head else 0.0, len(busy.get(k, ())))
                for k, head, d in zip(kinds, heads, depths)}

    def claim_due_webhooks(self, limit: int = 20):
        due = yield call("zrangebyscore", f"{self.p}webhooks", "-inf", time.time(), start=0, num=limit)
        if not due:
            return []
        won = yield Batch(tuple(call("zrem", f"{self.p}webhooks", m) for m in due))  # ZREM decides who delivers
        return [tuple(m.rsplit("|", 1)) for m, mine in zip(due, won) if mine]

    def schedule_webhook(self, job_id: str, event: str, delay_s: float):
        yield call("zadd", f"{self.p}webhooks", {f"{job_id}|{event}": time.time() + delay_s})

    def webhook_snapshot(self, job_id: str, event: str):
        raw = yield call("hgetall", f"{self.p}hooksnap:{job_id}|{event}")
        return (yield Compute(decode, (raw,), heavy=_wire(raw) > HEAVY_BYTES)) if raw else None

    def drop_webhook_snapshot(self, job_id: str, event: str):
        yield call("delete", f"{self.p}hooksnap:{job_id}|{event}")

    def observe_job_metrics(self, kind: str, metrics: dict[str, float]):
        key, calls = f"{self.p}jobhist", []
        for name in JOB_METRICS:
            value = metrics.get(name)
            if value is None:
                continue
            calls += [call("hincrby", key, f"{kind}|{name}|{bucket_of(value)}", 1),
                      call("hincrbyfloat", key, f"{kind}|{name}|sum", float(value)),
                      call("hincrby", key, f"{kind}|{name}|count", 1)]
        if calls:
            yield Batch(tuple(calls))

    def job_metric_histograms(self):
        raw = yield call("hgetall", f"{self.p}jobhist")
        out: dict[tuple[str, str], tuple[list[int], float, int]] = {}
        for field, value in raw.items():
            kind, name, slot = field.rsplit("|", 2)
            buckets, total, count = out.get((kind, name), ([0] * (len(METRIC_BUCKETS) + 1), 0.0, 0))
            if slot == "sum":
                total = float(value)
            elif slot == "count":
                count = int(value)
            else:
                buckets[int(slot)] = int(value)
            out[(kind, name)] = (buckets, total, count)
        return out

    def record_webhook(self, job_id: str, event: str, state: dict[str, Any]):
        key = self.job_key(job_id)
        raw = yield call("hget", key, "webhook_deliveries")
        deliveries = json.loads(raw) if raw else {}
        deliveries[event] = state
        if (yield call("exists", key)):
            yield call("hset", key, "webhook_deliveries", json.dumps(deliveries))

    # --- operations ---
    def ping(self):
        yield call("ping")

    def check_writable(self):
        yield call("set", f"{self.p}writable", str(time.time()), ex=60)  # refused at maxmemory (noeviction)

    def counts(self):
        raw = yield call("hgetall", f"{self.p}counts")
        out = {}
        for name, value in raw.items():
            kind, _, status = name.rpartition("|")
            if status in ALL_STATES:
                out[(kind, status)] = int(value)
        return out
