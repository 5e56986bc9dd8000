"""The API process's job store: async, and a source of change notifications.

Every method has the semantics of the JobStore method of the same name (base.py), awaited
instead of blocking. Implementations: AsyncRedisJobStore (redis.asyncio, one pool per process,
the same operations and Lua scripts as the sync store) and AsyncSqliteJobStore (the sync
SQLite store in a bounded executor). Get one with `JobStore.open_async()` inside the loop.

`listen(hub)` feeds every job change into `hub.publish(job_id, version, status)` until it is
cancelled: one listener per process, however many requests wait. `versions()` lets the hub
re-check what it watches every `recheck_s` seconds, so a missed notification (a reconnect, a
change made by another process on a shared SQLite file) costs at most that long.
"""
from __future__ import annotations

import abc
from typing import Any, Protocol

from service.store.base import JobRecord, UploadRecord


class ChangeSink(Protocol):
    def publish(self, job_id: str, version: int, status: str) -> None: ...

    def resync(self) -> None:
        """Notifications may have been missed (listener reconnected): re-check everything now."""

    def unavailable(self) -> None:
        """The listener lost the store: waits cannot be kept."""


class AsyncJobStore(abc.ABC):
    recheck_s: float = 5.0

    # --- jobs ---
    @abc.abstractmethod
    async def create_job(self, job: JobRecord, idempotency_key: str | None = None,
                         fingerprint: str = "") -> tuple[JobRecord, bool]: ...

    @abc.abstractmethod
    async def find_idempotent(self, tenant: str, idempotency_key: str, fingerprint: str = "") -> JobRecord | None: ...

    @abc.abstractmethod
    async def discard_job(self, job_id: str) -> bool: ...

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def read_job(self, job_id: str) -> JobRecord | None:
        """The job as clients see it: what rendering needs (id, tenant, kind, params, status,
        progress, stage, attempt, timestamps, error, result, model_profile, version, webhook
        deliveries); worker-side fields (worker, lease, cancel flag, attempts allowed, webhook
        subscriptions) may hold their defaults. Status reads and waits use it: it may read less."""

    @abc.abstractmethod
    async def list_jobs(self, tenant: str, *, kind: str | None = None, status: str | None = None,
                        cursor: str | None = None, limit: int = 20) -> tuple[list[JobRecord], str | None]: ...

    @abc.abstractmethod
    async def queue_position(self, job: JobRecord) -> int | None: ...

    @abc.abstractmethod
    async def queue_positions(self, jobs: list[JobRecord]) -> list[int | None]: ...

    @abc.abstractmethod
    async def request_cancel(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def active_jobs(self, tenant: str) -> int: ...

    @abc.abstractmethod
    async def mark_dispatched(self, job_id: str, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def versions(self, job_ids: list[str]) -> dict[str, tuple[int, str]]: ...

    # --- uploads, resources, capabilities ---
    @abc.abstractmethod
    async def put_upload(self, upload: UploadRecord) -> None: ...

    @abc.abstractmethod
    async def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    @abc.abstractmethod
    async def put_resource(self, kind: str, resource_id: str, tenant: str, doc: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def get_resource(self, kind: str, resource_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def list_resources(self, kind: str, tenant: str, cursor: str | None = None,
                             limit: int | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def charge_bytes(self, tenant: str, ledger: str, item: str, nbytes: int, ttl_s: float,
                           limit: int) -> tuple[bool, int, float]: ...

    @abc.abstractmethod
    async def bytes_used(self, tenant: str, ledger: str) -> int: ...

    @abc.abstractmethod
    async def release_bytes(self, tenant: str, ledger: str, item: str) -> None: ...

    @abc.abstractmethod
    async def update_resource(self, kind: str, resource_id: str, tenant: str, doc: dict[str, Any]) -> bool: ...

    @abc.abstractmethod
    async def delete_resource(self, kind: str, resource_id: str) -> bool: ...

    @abc.abstractmethod
    async def get_capabilities(self, kind: str, max_age_s: float = 120.0) -> list[dict[str, Any]]: ...

    # --- operations ---
    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def check_writable(self) -> None: ...

    @abc.abstractmethod
    async def listen(self, hub: ChangeSink) -> None:
        """Run until cancelled, feeding every job change into the hub."""

    async def mark_accepted(self, job_id: str, ttl_s: float) -> bool:
        """mark_dispatched, and make the job durable as the store can (Redis: on a replica when
        the primary has some). False: not durable in time; the caller withdraws the job."""
        await self.mark_dispatched(job_id, ttl_s)
        return True

    async def withdraw(self, job_id: str, tenant: str, idempotency_key: str | None) -> None:
        """Undo an accepted-but-not-durable job: canceled, its Idempotency-Key freed."""
        await self.request_cancel(job_id)

    @property
    def redis(self):
        """The redis.asyncio client (the rate limiter leases tokens through it); None without Redis."""
        return None

    @property
    def prefix(self) -> str:
        return "vj:"

    async def aclose(self) -> None:
        pass
