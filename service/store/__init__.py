"""Job store factory: Redis in distributed mode, SQLite in the embedded one.

Sync stores (JobStore) serve workers and background threads; each has an asyncio twin
(AsyncJobStore, `store.open_async()`) for the API's request path. See README.md here.
"""
from __future__ import annotations

from service.core.config import Settings
from service.store.base import JobStore


def build_job_store(settings: Settings) -> JobStore:
    if settings.distributed:
        from service.store.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_target(), retention_s=settings.retention_s,
                             wait_replicas=settings.redis_wait_replicas, wait_timeout_ms=settings.redis_wait_timeout_ms)
    from service.store.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.data_dir / "jobs.sqlite3", retention_s=settings.retention_s)
