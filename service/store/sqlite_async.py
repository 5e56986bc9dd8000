"""The embedded store for the API's request path: the sync SQLite store in a bounded executor.

Each call runs on one of THREADS threads (each with its own SQLite connection), never on the
event loop. Changes made in this process reach the hub through the store's listener hook (the
embedded worker thread shares the store object); changes by other processes sharing the file
are found by the hub's re-check every `recheck_s`.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from service.store.aio import AsyncJobStore, ChangeSink
from service.store.sqlite_store import SqliteJobStore

THREADS = 8


class AsyncSqliteJobStore(AsyncJobStore):
    recheck_s = 0.5  # other processes on the file (the sync store polls at 0.25 s)

    def __init__(self, store: SqliteJobStore, threads: int = THREADS):
        self.sync = store
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="vj-sqlite")

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    # --- jobs ---
    async def create_job(self, job, idempotency_key=None, fingerprint=""):
        return await self._call(self.sync.create_job, job, idempotency_key, fingerprint)

    async def find_idempotent(self, tenant, idempotency_key, fingerprint=""):
        return await self._call(self.sync.find_idempotent, tenant, idempotency_key, fingerprint)

    async def discard_job(self, job_id):
        return await self._call(self.sync.discard_job, job_id)

    async def get_job(self, job_id):
        return await self._call(self.sync.get_job, job_id)

    async def read_job(self, job_id):
        return await self._call(self.sync.get_job, job_id)

    async def list_jobs(self, tenant, *, kind=None, status=None, cursor=None, limit=20):
        return await self._call(self.sync.list_jobs, tenant, kind=kind, status=status, cursor=cursor, limit=limit)

    async def queue_position(self, job):
        return await self._call(self.sync.queue_position, job)

    async def queue_positions(self, jobs):
        return await self._call(self.sync.queue_positions, jobs)

    async def request_cancel(self, job_id):
        return await self._call(self.sync.request_cancel, job_id)

    async def active_jobs(self, tenant):
        return await self._call(self.sync.active_jobs, tenant)

    async def mark_dispatched(self, job_id, ttl_s):
        return await self._call(self.sync.mark_dispatched, job_id, ttl_s)

    async def versions(self, job_ids):
        return await self._call(self.sync.versions, list(job_ids))

    # --- uploads, resources, capabilities ---
    async def put_upload(self, upload):
        return await self._call(self.sync.put_upload, upload)

    async def get_upload(self, upload_id):
        return await self._call(self.sync.get_upload, upload_id)

    async def put_resource(self, kind, resource_id, tenant, doc):
        return await self._call(self.sync.put_resource, kind, resource_id, tenant, doc)

    async def get_resource(self, kind, resource_id):
        return await self._call(self.sync.get_resource, kind, resource_id)

    async def list_resources(self, kind, tenant, cursor=None, limit=None):
        return await self._call(self.sync.list_resources, kind, tenant, cursor, limit)

    async def charge_bytes(self, tenant, ledger, item, nbytes, ttl_s, limit):
        return await self._call(self.sync.charge_bytes, tenant, ledger, item, nbytes, ttl_s, limit)

    async def bytes_used(self, tenant, ledger):
        return await self._call(self.sync.bytes_used, tenant, ledger)

    async def release_bytes(self, tenant, ledger, item):
        return await self._call(self.sync.release_bytes, tenant, ledger, item)

    async def update_resource(self, kind, resource_id, tenant, doc):
        return await self._call(self.sync.update_resource, kind, resource_id, tenant, doc)

    async def delete_resource(self, kind, resource_id):
        return await self._call(self.sync.delete_resource, kind, resource_id)

    async def get_capabilities(self, kind, max_age_s=120.0):
        return await self._call(self.sync.get_capabilities, kind, max_age_s)

    # --- operations ---
    async def ping(self):
        return await self._call(self.sync.ping)

    async def check_writable(self):
        return await self._call(self.sync.check_writable)

    async def listen(self, hub: ChangeSink) -> None:
        loop = asyncio.get_running_loop()

        def changed(job_id: str, version: int, status: str) -> None:  # any thread
            loop.call_soon_threadsafe(hub.publish, job_id, version, status)

        self.sync.add_listener(changed)
        hub.resync()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.sync.remove_listener(changed)

    async def aclose(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
