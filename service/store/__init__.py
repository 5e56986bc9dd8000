"""Job store factory: Redis in distributed mode, SQLite in the embedded one."""
from __future__ import annotations

from service.core.config import Settings
from service.store.base import JobStore


def build_job_store(settings: Settings) -> JobStore:
    if settings.redis_url:
        from service.store.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url, retention_s=settings.retention_s)
    from service.store.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.data_dir / "jobs.sqlite3", retention_s=settings.retention_s)
