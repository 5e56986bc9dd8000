"""Redis job-store operations on tenant resources, stored-bytes ledgers, retention purges and
worker capabilities: a mixin of RedisOps (its prefix `self.p`), semantics as in base.JobStore."""
from __future__ import annotations

import json
import time
from typing import Any

from service.store.base import ARTIFACTS, FOREVER_S
from service.store.redis_steps import Batch, Script, call


class ResourceOps:
    p: str

    # --- tenant-owned resources ---
    def put_resource(self, kind: str, resource_id: str, tenant: str, doc: dict[str, Any]):
        yield Batch((call("set", f"{self.p}res:{kind}:{resource_id}",
                          json.dumps({**doc, "id": resource_id, "tenant": tenant})),
                     call("zadd", f"{self.p}res:{kind}:tenant:{tenant}", {resource_id: 0}),
                     call("zadd", f"{self.p}res_used", {f"{kind}|{resource_id}": time.time()})))
        if doc.get("stored_bytes"):  # the artifact's bytes count against the tenant's artifact quota
            yield Script("CHARGE", (self.p, ARTIFACTS, tenant, f"{kind}|{resource_id}", int(doc["stored_bytes"]),
                                    FOREVER_S, 0))

    def touch_resource(self, kind: str, resource_id: str):
        yield call("zadd", f"{self.p}res_used", {f"{kind}|{resource_id}": time.time()}, xx=True)

    def idle_resources(self, older_than_s: float, limit: int = 100):
        due = yield call("zrangebyscore", f"{self.p}res_used", "-inf", time.time() - older_than_s, start=0, num=limit)
        if not due:
            return []
        won = yield Batch(tuple(call("zrem", f"{self.p}res_used", m) for m in due))  # ZREM decides who deletes
        return [tuple(m.split("|", 1)) for m, mine in zip(due, won) if mine]

    def claim_due_purges(self, limit: int = 100):
        due = yield call("zrangebyscore", f"{self.p}purge", "-inf", time.time(), start=0, num=limit)
        if not due:
            return []
        won = yield Batch(tuple(call("zrem", f"{self.p}purge", m) for m in due))
        return [m for m, mine in zip(due, won) if mine]

    def get_resource(self, kind: str, resource_id: str):
        raw = yield call("get", f"{self.p}res:{kind}:{resource_id}")
        return json.loads(raw) if raw else None

    def list_resources(self, kind: str, tenant: str, cursor: str | None = None, limit: int | None = None):
        # every member has score 0, so lexicographic order is id order (ids are time-sortable)
        page = {"start": 0, "num": limit} if limit else {}
        ids = yield call("zrevrangebylex", f"{self.p}res:{kind}:tenant:{tenant}", f"({cursor}" if cursor else "+", "-",
                         **page)
        if not ids:
            return []
        docs = yield Batch(tuple(call("get", f"{self.p}res:{kind}:{i}") for i in ids))
        return [json.loads(d) for d in docs if d is not None]

    def update_resource(self, kind: str, resource_id: str, tenant: str, doc: dict[str, Any]):
        # SET XX: written only while the key exists, in one command (a DELETE in between wins)
        done = yield call("set", f"{self.p}res:{kind}:{resource_id}",
                          json.dumps({**doc, "id": resource_id, "tenant": tenant}), xx=True)
        return bool(done)

    def delete_resource(self, kind: str, resource_id: str):
        doc = yield from self.get_resource(kind, resource_id)
        if doc is None:
            return False
        yield Batch((call("delete", f"{self.p}res:{kind}:{resource_id}"),
                     call("zrem", f"{self.p}res:{kind}:tenant:{doc['tenant']}", resource_id),
                     call("zrem", f"{self.p}res_used", f"{kind}|{resource_id}")))
        yield Script("RELEASE_BYTES", (self.p, ARTIFACTS, doc["tenant"], f"{kind}|{resource_id}"))
        return True

    # --- stored-bytes ledgers ---
    def charge_bytes(self, tenant: str, ledger: str, item: str, nbytes: int, ttl_s: float, limit: int):
        ok, used, wait = yield Script("CHARGE", (self.p, ledger, tenant, item, int(nbytes), float(ttl_s), int(limit)))
        return bool(ok), int(used), float(wait)

    def bytes_used(self, tenant: str, ledger: str):
        # the running total; entries whose time ended leave it at the next charge (artifacts never end)
        return int((yield call("get", f"{self.p}bytes:{ledger}:{tenant}:total")) or 0)

    def release_bytes(self, tenant: str, ledger: str, item: str):
        yield Script("RELEASE_BYTES", (self.p, ledger, tenant, item))

    # --- capabilities ---
    def put_capabilities(self, kind: str, worker: str, caps: dict[str, Any]):
        yield call("hset", f"{self.p}caps:{kind}", worker, json.dumps({**caps, "seen_at": time.time()}))

    def get_capabilities(self, kind: str, max_age_s: float = 120.0):
        raw = yield call("hgetall", f"{self.p}caps:{kind}")
        fresh = [json.loads(v) for v in raw.values()]
        return [c for c in fresh if c.get("seen_at", 0) > time.time() - max_age_s]
