"""Embedded job store: one SQLite file, no server.

Each transition is one `BEGIN IMMEDIATE` transaction, so it is atomic across threads and
across processes sharing the file. In-process changes wake sync waiters (a condition variable)
and the registered listeners (the API's ChangeHub, through AsyncSqliteJobStore); changes made
by other processes on the same file are seen by polling (0.25 s here, the hub's re-check there).
Listing indexes per status and kind make a filtered page cost the rows it returns.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from service.store.base import (
    CANCELED, FAILED, FINAL_STATES, JOB_METRICS, METRIC_BUCKETS, QUEUED, RUNNING, SUCCEEDED, Claim,
    IdempotencyMismatch, JobRecord, JobStore, QueueStats, StoreFull, StoreUnavailable, UploadRecord, bucket_of,
    check_extra,
)
from service.store.sqlite_resources import SqliteResources
from service.store.summary import summarize_params

SNAPSHOT_S = 86400  # a webhook payload's copy: deliveries end within 8 attempts (under 90 min)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
  created_at REAL NOT NULL, lease_until REAL, expires_at REAL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, id);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, kind, created_at);
CREATE INDEX IF NOT EXISTS jobs_tenant_status ON jobs (tenant, status, id);
CREATE INDEX IF NOT EXISTS jobs_tenant_kind ON jobs (tenant, kind, id);
CREATE INDEX IF NOT EXISTS jobs_tenant_kind_status ON jobs (tenant, kind, status, id);
CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY, expires_at REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS webhooks (job_id TEXT, event TEXT, due_at REAL, PRIMARY KEY (job_id, event));
CREATE TABLE IF NOT EXISTS job_metric_hist (kind TEXT, metric TEXT, slot TEXT, value REAL,
  PRIMARY KEY (kind, metric, slot));
CREATE TABLE IF NOT EXISTS webhook_snapshots (job_id TEXT, event TEXT, expires_at REAL, doc TEXT,
  PRIMARY KEY (job_id, event));
CREATE TABLE IF NOT EXISTS resources (kind TEXT, id TEXT, tenant TEXT, doc TEXT, PRIMARY KEY (kind, id));
CREATE INDEX IF NOT EXISTS resources_tenant ON resources (kind, tenant, id);
CREATE TABLE IF NOT EXISTS capabilities (kind TEXT, worker TEXT, seen_at REAL, doc TEXT,
  PRIMARY KEY (kind, worker));
CREATE TABLE IF NOT EXISTS idempotency (tenant TEXT, key TEXT, job_id TEXT, expires_at REAL,
  PRIMARY KEY (tenant, key));
CREATE TABLE IF NOT EXISTS ledger (tenant TEXT, ledger TEXT, item TEXT, bytes INTEGER, expires_at REAL,
  PRIMARY KEY (tenant, ledger, item));
CREATE TABLE IF NOT EXISTS purges (item TEXT PRIMARY KEY, due_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS purges_due ON purges (due_at);
"""
# the file refusing writes: a full disk or quota, a read-only file or mount, I/O errors, a writer
# holding the lock past the busy timeout
_REFUSALS = ("database or disk is full", "readonly database", "disk i/o error", "database is locked")


def _refusal(exc: sqlite3.OperationalError) -> StoreUnavailable | None:
    text = str(exc).lower()
    if any(r in text for r in _REFUSALS):
        return (StoreUnavailable if "locked" in text else StoreFull)(f"sqlite refuses writes: {text[:200]}")
    return None


_WORKER_LOST = {"code": "worker_lost", "message": "the worker running this job stopped answering on every attempt"}


class SqliteJobStore(SqliteResources, JobStore):
    def __init__(self, path: Path, *, retention_s: int = 7 * 86400):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self._local = threading.local()
        self._changed = threading.Condition()
        self._listeners: list = []  # fn(job_id, version, status), called in the writing thread
        db = self._db()
        db.executescript(_SCHEMA)
        if "summary" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
            db.execute("ALTER TABLE jobs ADD COLUMN summary TEXT")  # files made before list summaries
        if "used_at" not in {row[1] for row in db.execute("PRAGMA table_info(resources)")}:
            db.execute("ALTER TABLE resources ADD COLUMN used_at REAL")  # files made before idle artifacts
        if "fingerprint" not in {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}:
            db.execute("ALTER TABLE idempotency ADD COLUMN fingerprint TEXT")  # files made before fingerprints

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self):
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise (_refusal(exc) or exc) from exc

    def check_writable(self) -> None:
        """Room for a job's worth of rows (64 KiB), written and rolled back: a file with a few
        bytes left in its last page is not ready."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO purges VALUES ('.writable' || hex(zeroblob(32768)), 0)")  # never an object key
            finally:
                db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            raise (_refusal(exc) or exc) from exc

    def _save(self, db, job: JobRecord, lease_until: float | None = None) -> JobRecord:
        job.version += 1
        expires = time.time() + self.retention_s if job.final else None
        # the params summary (list pages) is written once, with the job: params never change
        db.execute("INSERT INTO jobs (id, tenant, kind, status, created_at, lease_until, expires_at, doc, summary) "
                   "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET status=excluded.status, "
                   "lease_until=excluded.lease_until, expires_at=excluded.expires_at, doc=excluded.doc",
                   (job.id, job.tenant, job.kind, job.status, job.created_at, lease_until, expires,
                    json.dumps(job.to_dict()), json.dumps(summarize_params(job.params)) if job.version == 1 else None))
        if expires is not None:  # the job's outputs go with its record
            db.execute("INSERT OR REPLACE INTO purges VALUES (?,?)", (f"jobs/{job.id}/", expires))
        return job

    @staticmethod
    def _hook(db, job: JobRecord) -> None:
        """Outbox: a transition into a subscribed state enqueues its delivery in the same transaction."""
        if job.webhook_events and f",{job.status}," in job.webhook_events:
            db.execute("INSERT OR IGNORE INTO webhooks VALUES (?,?,?)", (job.id, job.status, time.time()))
            # the job as of the event: the delivery's payload, whenever it is sent
            db.execute("INSERT OR REPLACE INTO webhook_snapshots VALUES (?,?,?,?)",
                       (job.id, job.status, time.time() + SNAPSHOT_S, json.dumps(job.to_dict())))

    def _notify(self, *jobs: JobRecord):
        with self._changed:
            self._changed.notify_all()
        for fn in list(self._listeners):
            for job in jobs:
                fn(job.id, job.version, job.status)

    def add_listener(self, fn) -> None:
        """`fn(job_id, version, status)` after every change this process makes (any thread)."""
        self._listeners.append(fn)

    def remove_listener(self, fn) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    @staticmethod
    def _load(row) -> JobRecord | None:
        if not row:
            return None
        job = JobRecord(**json.loads(row[0]))
        job._wire_bytes = len(row[0])  # a size hint for the API (base.wire_bytes)
        return job

    def open_async(self, *, pool_size: int = 64, cpu=None):
        from service.store.sqlite_async import AsyncSqliteJobStore

        return AsyncSqliteJobStore(self)

    def _get(self, db, job_id) -> JobRecord | None:
        return self._load(db.execute("SELECT doc FROM jobs WHERE id=? AND (expires_at IS NULL OR expires_at>?)",
                                     (job_id, time.time())).fetchone())

    # --- API side ---
    def _idempotent(self, db, tenant, key, fingerprint) -> JobRecord | None:
        row = db.execute("SELECT job_id, fingerprint FROM idempotency WHERE tenant=? AND key=? AND expires_at>?",
                         (tenant, key, time.time())).fetchone()
        existing = row and self._get(db, row[0])
        if existing and row[1] and fingerprint and row[1] != fingerprint:
            raise IdempotencyMismatch(existing.id)
        return existing or None

    def create_job(self, job, idempotency_key=None, fingerprint=""):
        with self._tx() as db:
            if idempotency_key:
                existing = self._idempotent(db, job.tenant, idempotency_key, fingerprint)
                if existing:
                    return existing, False
                db.execute("INSERT OR REPLACE INTO idempotency (tenant, key, job_id, expires_at, fingerprint) "
                           "VALUES (?,?,?,?,?)",
                           (job.tenant, idempotency_key, job.id, time.time() + self.retention_s, fingerprint))
            self._save(db, job)
        self._notify(job)
        return job, True

    def find_idempotent(self, tenant, idempotency_key, fingerprint=""):
        return self._idempotent(self._db(), tenant, idempotency_key, fingerprint)

    def discard_job(self, job_id):
        with self._tx() as db:
            gone = db.execute("DELETE FROM jobs WHERE id=? AND status=? AND json_extract(doc, '$.attempt')=0",
                              (job_id, QUEUED)).rowcount > 0
            if gone:
                db.execute("DELETE FROM idempotency WHERE job_id=?", (job_id,))
        return gone

    def get_job(self, job_id):
        return self._get(self._db(), job_id)

    def list_jobs(self, tenant, *, kind=None, status=None, cursor=None, limit=20):
        # the document without its params (SQLite drops them while reading), and the summary
        sql = "SELECT json_remove(doc, '$.params', '$.logs'), summary, id FROM jobs WHERE tenant=? AND (expires_at IS NULL OR expires_at>?)"
        args = [tenant, time.time()]
        for column, value in (("kind", kind), ("status", status)):
            if value:
                sql += f" AND {column}=?"
                args.append(value)
        if cursor:
            sql += " AND id<?"
            args.append(cursor)
        db = self._db()
        rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit + 1)).fetchall()
        jobs = []
        for doc, summary, job_id in rows[:limit]:
            data = json.loads(doc)
            if summary is None:  # written before summaries existed
                (full,) = db.execute("SELECT json_extract(doc, '$.params') FROM jobs WHERE id=?", (job_id,)).fetchone()
                summary = json.dumps(summarize_params(json.loads(full or "{}")))
            job = JobRecord(**data, params=json.loads(summary))
            job._wire_bytes = len(doc) + len(summary)
            jobs.append(job)
        return jobs, (jobs[-1].id if len(rows) > limit else None)

    def versions(self, job_ids):
        out = {}
        ids = list(job_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._db().execute(
                f"SELECT id, json_extract(doc, '$.version'), status FROM jobs WHERE id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
            out.update({job_id: (int(version), status) for job_id, version, status in rows})
        return out

    def queue_position(self, job):
        if job.status != QUEUED:
            return None
        (ahead,) = self._db().execute(
            "SELECT COUNT(*) FROM jobs WHERE status=? AND kind=? AND (created_at<? OR (created_at=? AND id<?))",
            (QUEUED, job.kind, job.created_at, job.created_at, job.id)).fetchone()
        return ahead + 1

    def queued_ids(self, kind, limit):
        rows = self._db().execute("SELECT id FROM jobs WHERE status=? AND kind=? ORDER BY created_at, id LIMIT ?",
                                  (QUEUED, kind, limit)).fetchall()
        return [r[0] for r in rows]

    def active_jobs(self, tenant):
        return self._db().execute("SELECT COUNT(*) FROM jobs WHERE tenant=? AND status IN (?, ?)",
                                  (tenant, QUEUED, RUNNING)).fetchone()[0]

    def queue_depth(self, kind):
        return self._db().execute("SELECT COUNT(*) FROM jobs WHERE status=? AND kind=?", (QUEUED, kind)).fetchone()[0]

    def request_cancel(self, job_id):
        with self._tx() as db:
            job = self._get(db, job_id)
            if job is None:
                return None
            if job.status == QUEUED:
                job.status, job.stage, job.finished_at = CANCELED, CANCELED, time.time()
                job.cancel_requested = True
                job.error = {"code": "canceled", "message": "canceled by the client before it started"}
                self._save(db, job)
                self._hook(db, job)
            elif job.status == RUNNING and not job.cancel_requested:
                job.cancel_requested, job.stage = True, "canceling"
                self._save(db, job, self._lease(db, job_id))
        self._notify(job)
        return job

    def wait_for_change(self, job_id, version, timeout):
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            remaining = deadline - time.monotonic()
            if job is None or job.version > version or remaining <= 0:
                return job
            with self._changed:
                self._changed.wait(min(remaining, 0.25))

    def put_upload(self, upload):
        with self._tx() as db:
            expires = time.time() + self.retention_s
            db.execute("INSERT OR REPLACE INTO uploads VALUES (?,?,?)", (upload.id, expires, json.dumps(upload.to_dict())))
            db.execute("INSERT OR REPLACE INTO purges VALUES (?,?)", (upload.key, expires))

    def get_upload(self, upload_id):
        row = self._db().execute("SELECT doc FROM uploads WHERE id=? AND expires_at>?",
                                 (upload_id, time.time())).fetchone()
        return UploadRecord(**json.loads(row[0])) if row else None

    # --- worker side ---
    @staticmethod
    def _lease(db, job_id) -> float | None:
        row = db.execute("SELECT lease_until FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row[0] if row else None

    def claim(self, job_id, worker, lease_s):
        with self._tx() as db:
            job = self._get(db, job_id)
            if job is None:
                return Claim(None, "not_found")
            if job.status != QUEUED:
                return Claim(None, "canceled" if job.status == CANCELED else "not_queued")
            now = time.time()
            job.status, job.stage, job.progress, job.worker = RUNNING, "starting", 0.0, worker
            job.attempt += 1
            job.started_at = now
            self._save(db, job, now + lease_s)
            self._hook(db, job)
        self._notify(job)
        return Claim(job, "claimed")

    def heartbeat(self, job_id, attempt, lease_s, *, progress=None, stage=None, result=None, extra=None):
        extra = check_extra(extra)
        with self._tx() as db:
            job = self._get(db, job_id)
            if job is None or job.status != RUNNING or job.attempt != attempt:
                return True
            if progress is not None:
                job.progress, job.stage = float(progress), stage
                if result is not None:
                    job.result = result
            for name, value in extra.items():
                setattr(job, name, value)
            if progress is not None or extra:
                self._save(db, job, time.time() + lease_s)
            else:
                db.execute("UPDATE jobs SET lease_until=? WHERE id=?", (time.time() + lease_s, job_id))
        if progress is not None or extra:
            self._notify(job)
        return job.cancel_requested

    def finish(self, job_id, attempt, status, *, result=None, error=None, model_profile=None, extra=None):
        assert status in FINAL_STATES
        extra = check_extra(extra)
        with self._tx() as db:
            job = self._get(db, job_id)
            if job is None or job.status != RUNNING or job.attempt != attempt:
                return None
            job.status, job.stage, job.finished_at = status, status, time.time()
            job.error = error
            job.result = job.result if result is None else result  # none: a partial result stays
            job.model_profile = model_profile or job.model_profile
            for name, value in extra.items():
                setattr(job, name, value)
            if status == SUCCEEDED:
                job.progress = 1.0
            self._save(db, job)
            self._hook(db, job)
        self._notify(job)
        return job

    def reap_expired(self, now=None, limit=100):
        now = time.time() if now is None else now
        requeued, changed = [], []
        with self._tx() as db:
            rows = db.execute("SELECT doc FROM jobs WHERE status=? AND lease_until<? LIMIT ?",
                              (RUNNING, now, limit)).fetchall()
            for row in rows:
                job = self._load(row)
                if job.cancel_requested:
                    job.status, job.error = CANCELED, {"code": "canceled", "message": "canceled by the client"}
                elif job.attempt >= job.max_attempts:
                    job.status, job.error = FAILED, dict(_WORKER_LOST)
                else:
                    job.status, job.stage, job.worker, job.progress = QUEUED, "requeued after lost worker", None, 0.0
                    requeued.append(job.id)
                if job.final:
                    job.stage, job.finished_at = job.status, now
                self._save(db, job)
                self._hook(db, job)
                changed.append(job)
            # Retention: drop expired rows while we hold the write lock anyway.
            wall = time.time()
            db.execute("DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at<?", (wall,))
            db.execute("DELETE FROM uploads WHERE expires_at<?", (wall,))
            db.execute("DELETE FROM idempotency WHERE expires_at<?", (wall,))
            db.execute("DELETE FROM webhook_snapshots WHERE expires_at<?", (wall,))
        if rows:
            self._notify(*changed)
        return requeued

    def next_queued(self, kinds=None):
        sql, args = "SELECT id FROM jobs WHERE status=?", [QUEUED]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        row = self._db().execute(sql + " ORDER BY created_at, id LIMIT 1", args).fetchone()
        return row[0] if row else None

    def wait_for_queued(self, timeout: float) -> None:
        """Sleep until some job changes (in-process) or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def webhook_snapshot(self, job_id, event):
        row = self._db().execute("SELECT doc FROM webhook_snapshots WHERE job_id=? AND event=?",
                                 (job_id, event)).fetchone()
        return self._load(row)

    def drop_webhook_snapshot(self, job_id, event):
        with self._tx() as db:
            db.execute("DELETE FROM webhook_snapshots WHERE job_id=? AND event=?", (job_id, event))

    def observe_job_metrics(self, kind, metrics):
        rows = []
        for name in JOB_METRICS:
            value = metrics.get(name)
            if value is not None:
                rows += [(kind, name, str(bucket_of(value)), 1.0), (kind, name, "sum", float(value)),
                         (kind, name, "count", 1.0)]
        if rows:
            with self._tx() as db:
                db.executemany("INSERT INTO job_metric_hist VALUES (?,?,?,?) ON CONFLICT (kind, metric, slot) "
                               "DO UPDATE SET value = value + excluded.value", rows)

    def job_metric_histograms(self):
        out = {}
        for kind, name, slot, value in self._db().execute("SELECT kind, metric, slot, value FROM job_metric_hist"):
            buckets, total, count = out.get((kind, name), ([0] * (len(METRIC_BUCKETS) + 1), 0.0, 0))
            if slot == "sum":
                total = value
            elif slot == "count":
                count = int(value)
            else:
                buckets[int(slot)] = int(value)
            out[(kind, name)] = (buckets, total, count)
        return out

    # --- operations ---
    def ping(self):
        self._db().execute("SELECT 1").fetchone()

    def counts(self):
        rows = self._db().execute("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status").fetchall()
        return {(k, s): n for k, s, n in rows}

    def queue_stats(self, kinds):
        db, now = self._db(), time.time()
        queued = {k: (n, oldest) for k, n, oldest in db.execute(
            "SELECT kind, COUNT(*), MIN(created_at) FROM jobs WHERE status=? GROUP BY kind", (QUEUED,))}
        busy = dict(db.execute("SELECT kind, COUNT(DISTINCT json_extract(doc, '$.worker')) FROM jobs "
                               "WHERE status=? GROUP BY kind", (RUNNING,)).fetchall())
        return {k: QueueStats(queued.get(k, (0, None))[0],
                              max(0.0, now - queued[k][1]) if k in queued else 0.0, busy.get(k, 0)) for k in kinds}
