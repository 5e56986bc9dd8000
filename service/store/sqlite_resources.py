"""The embedded store's webhook outbox, tenant resources, stored-bytes ledgers, retention purges and worker
capabilities: a mixin of SqliteJobStore (its `_tx` and `_db`), semantics as in base.JobStore."""
from __future__ import annotations

import json
import time

from service.store.base import ARTIFACTS, FOREVER_S


class SqliteResources:
    def claim_due_webhooks(self, limit=20):
        with self._tx() as db:
            rows = db.execute("SELECT job_id, event FROM webhooks WHERE due_at<=? ORDER BY due_at LIMIT ?",
                              (time.time(), limit)).fetchall()
            db.executemany("DELETE FROM webhooks WHERE job_id=? AND event=?", rows)
        return [tuple(r) for r in rows]

    def schedule_webhook(self, job_id, event, delay_s):
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO webhooks VALUES (?,?,?)", (job_id, event, time.time() + delay_s))

    def record_webhook(self, job_id, event, state):
        with self._tx() as db:
            row = db.execute("SELECT doc FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row:
                doc = json.loads(row[0])
                doc["webhook_deliveries"] = {**(doc.get("webhook_deliveries") or {}), event: state}
                db.execute("UPDATE jobs SET doc=? WHERE id=?", (json.dumps(doc), job_id))

    def put_resource(self, kind, resource_id, tenant, doc):
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO resources (kind, id, tenant, doc, used_at) VALUES (?,?,?,?,?)",
                       (kind, resource_id, tenant, json.dumps({**doc, "id": resource_id, "tenant": tenant}), time.time()))
            if doc.get("stored_bytes"):  # counts against the tenant's artifact quota until deleted
                db.execute("INSERT OR REPLACE INTO ledger VALUES (?,?,?,?,?)",
                           (tenant, ARTIFACTS, f"{kind}|{resource_id}", int(doc["stored_bytes"]), time.time() + FOREVER_S))

    def touch_resource(self, kind, resource_id):
        with self._tx() as db:
            db.execute("UPDATE resources SET used_at=? WHERE kind=? AND id=?", (time.time(), kind, resource_id))

    def idle_resources(self, older_than_s, limit=100):
        with self._tx() as db:  # a resource is handed out once: its used_at is cleared as it is
            rows = db.execute("SELECT kind, id FROM resources WHERE used_at<? LIMIT ?",
                              (time.time() - older_than_s, limit)).fetchall()
            db.executemany("UPDATE resources SET used_at=NULL WHERE kind=? AND id=?", rows)
        return [tuple(r) for r in rows]

    def charge_bytes(self, tenant, ledger, item, nbytes, ttl_s, limit):
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM ledger WHERE tenant=? AND ledger=? AND expires_at<=?", (tenant, ledger, now))
            used, first = db.execute("SELECT COALESCE(SUM(bytes), 0), MIN(expires_at) FROM ledger "
                                     "WHERE tenant=? AND ledger=?", (tenant, ledger)).fetchone()
            (previous,) = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM ledger WHERE tenant=? AND ledger=? AND item=?",
                                     (tenant, ledger, item)).fetchone()
            wait = max(0.0, first - now) if first is not None else 0.0
            if limit > 0 and used - previous + nbytes > limit:
                return False, used, wait
            db.execute("INSERT OR REPLACE INTO ledger VALUES (?,?,?,?,?)", (tenant, ledger, item, nbytes, now + ttl_s))
        return True, used, wait

    def bytes_used(self, tenant, ledger):
        return self._db().execute("SELECT COALESCE(SUM(bytes), 0) FROM ledger WHERE tenant=? AND ledger=? AND "
                                  "expires_at>?", (tenant, ledger, time.time())).fetchone()[0]

    def release_bytes(self, tenant, ledger, item):
        with self._tx() as db:
            db.execute("DELETE FROM ledger WHERE tenant=? AND ledger=? AND item=?", (tenant, ledger, item))

    def claim_due_purges(self, limit=100):
        with self._tx() as db:
            rows = db.execute("SELECT item FROM purges WHERE due_at<=? ORDER BY due_at LIMIT ?",
                              (time.time(), limit)).fetchall()
            db.executemany("DELETE FROM purges WHERE item=?", rows)
        return [r[0] for r in rows]

    def get_resource(self, kind, resource_id):
        row = self._db().execute("SELECT doc FROM resources WHERE kind=? AND id=?", (kind, resource_id)).fetchone()
        return json.loads(row[0]) if row else None

    def list_resources(self, kind, tenant, cursor=None, limit=None):
        rows = self._db().execute("SELECT doc FROM resources WHERE kind=? AND tenant=? AND (? IS NULL OR id < ?) "
                                  "ORDER BY id DESC LIMIT ?", (kind, tenant, cursor, cursor, limit or -1)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def update_resource(self, kind, resource_id, tenant, doc):
        with self._tx() as db:
            return db.execute("UPDATE resources SET doc=? WHERE kind=? AND id=? AND tenant=?",
                              (json.dumps({**doc, "id": resource_id, "tenant": tenant}), kind, resource_id,
                               tenant)).rowcount > 0

    def delete_resource(self, kind, resource_id):
        with self._tx() as db:
            db.execute("DELETE FROM ledger WHERE ledger=? AND item=?", (ARTIFACTS, f"{kind}|{resource_id}"))
            return db.execute("DELETE FROM resources WHERE kind=? AND id=?", (kind, resource_id)).rowcount > 0

    def put_capabilities(self, kind, worker, caps):
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO capabilities VALUES (?,?,?,?)",
                       (kind, worker, time.time(), json.dumps(caps)))

    def get_capabilities(self, kind, max_age_s=120.0):
        rows = self._db().execute("SELECT doc FROM capabilities WHERE kind=? AND seen_at>?",
                                  (kind, time.time() - max_age_s)).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- operations ---
