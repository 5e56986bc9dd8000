"""Long-polls and event streams wait here: one hub per API process fans the store's change
notifications out to the requests waiting on each job.

A waiter is a small object with one future while it sleeps: no thread, no store connection.
The store's listener (one per process, AsyncJobStore.listen) calls `publish`; every
`recheck_s` the hub also reads the versions of every watched job in one pipelined pass, so a
lost notification costs at most that long. Each tenant may hold `max_per_tenant` waiters in
this process (more: TooManyWaiters, a 429). `shutdown()` wakes everyone with "stopping".
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Awaitable, Callable

from service.store.base import FINAL_STATES

log = logging.getLogger("visionjobs.waiters")
RECENT = 65536  # last versions seen per job id: closes the race between a read and registering
_FINAL_REASONS = ("gone", "stopping", "unavailable")


class TooManyWaiters(Exception):
    def __init__(self, limit: int):
        super().__init__(f"at most {limit} concurrent waits per key")
        self.limit = limit


class Waiter:
    """Wakes when its job moves past `version` (with `final_only`: only into a final state)."""

    __slots__ = ("hub", "tenant", "job_id", "version", "final_only", "_future", "_pending", "_closed")

    def __init__(self, hub: "ChangeHub", tenant: str, job_id: str, version: int, final_only: bool):
        self.hub, self.tenant, self.job_id = hub, tenant, job_id
        self.version, self.final_only = version, final_only
        self._future: asyncio.Future | None = None
        self._pending: str | None = None
        self._closed = False

    def offer(self, version: int, status: str) -> None:
        if version > self.version and (not self.final_only or status in FINAL_STATES or status == ""):
            self.wake("changed")

    def wake(self, reason: str) -> None:
        """reason: changed | gone (client hung up) | stopping (server stops) | unavailable (the
        store went away: the wait cannot be kept)."""
        future = self._future
        if future is not None and not future.done():
            future.set_result(reason)
        elif self._pending not in _FINAL_REASONS:  # those stick
            self._pending = reason

    async def wait(self, timeout: float) -> str:
        """Sleep until woken or `timeout` seconds pass: changed | gone | stopping | unavailable | timeout."""
        if self._pending is not None:
            reason, self._pending = self._pending, None
            if reason in _FINAL_REASONS:
                self._pending = reason
            return reason
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        timer = loop.call_later(max(0.0, timeout), _resolve, future, "timeout")
        try:
            return await future
        finally:
            timer.cancel()
            self._future = None

    def seen(self, version: int) -> None:
        """The caller has read the job at `version`: wake only for newer ones from now on."""
        self.version = max(self.version, version)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.hub._remove(self)

    def __enter__(self) -> "Waiter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _resolve(future: asyncio.Future, reason: str) -> None:
    if not future.done():
        future.set_result(reason)


class ChangeHub:
    def __init__(self, versions: Callable[[list[str]], Awaitable[dict[str, tuple[int, str]]]], *,
                 max_per_tenant: int, recheck_s: float = 5.0):
        self._versions = versions
        self.max_per_tenant, self.recheck_s = max_per_tenant, recheck_s
        self._by_job: dict[str, set[Waiter]] = defaultdict(set)
        self._per_tenant: dict[str, int] = defaultdict(int)
        self._recent: dict[str, tuple[int, str]] = {}
        self._resync = asyncio.Event()
        self.stopping = False
        self.total = 0      # waiters now (a plain int: /metrics reads it from another thread)
        self.published = 0  # notifications received

    # --- waiters ---
    def watch(self, tenant: str, job_id: str, version: int, *, final_only: bool = False) -> Waiter:
        """Register a waiter (use it as a context manager, or close() it). Raises TooManyWaiters."""
        if self.max_per_tenant and self._per_tenant[tenant] >= self.max_per_tenant:
            raise TooManyWaiters(self.max_per_tenant)
        waiter = Waiter(self, tenant, job_id, version, final_only)
        self._by_job[job_id].add(waiter)
        self._per_tenant[tenant] += 1
        self.total += 1
        if self.stopping:
            waiter.wake("stopping")
        elif job_id in self._recent:  # a change published between the caller's read and now
            waiter.offer(*self._recent[job_id])
        return waiter

    def _remove(self, waiter: Waiter) -> None:
        waiters = self._by_job.get(waiter.job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._by_job[waiter.job_id]
        self._per_tenant[waiter.tenant] -= 1
        self.total -= 1
        if self._per_tenant[waiter.tenant] <= 0:
            del self._per_tenant[waiter.tenant]

    def count(self, tenant: str | None = None) -> int:
        return self.total if tenant is None else self._per_tenant.get(tenant, 0)

    def jobs_watched(self) -> int:
        return len(self._by_job)

    # --- notifications ---
    def publish(self, job_id: str, version: int, status: str) -> None:
        self.published += 1
        recent = self._recent
        if job_id in recent:
            if recent[job_id][0] >= version:
                return
            del recent[job_id]  # re-insert at the end: the dict is oldest-first
        elif len(recent) >= RECENT:
            del recent[next(iter(recent))]
        recent[job_id] = (version, status)
        for waiter in tuple(self._by_job.get(job_id, ())):
            waiter.offer(version, status)

    def resync(self) -> None:
        self._resync.set()

    def unavailable(self) -> None:
        """The store went away (the listener lost it): every wait ends now, with a 503 or a
        stream's `retry:`, as a read would; clients come back once it is reachable again."""
        for waiters in list(self._by_job.values()):
            for waiter in tuple(waiters):
                waiter.wake("unavailable")

    async def recheck(self) -> None:
        """Compare every watched job's version with the store's (one pipelined pass)."""
        ids = list(self._by_job)
        if not ids:
            return
        current = await self._versions(ids)
        for job_id in ids:
            version, status = current.get(job_id, (None, ""))
            for waiter in tuple(self._by_job.get(job_id, ())):
                if version is None:
                    waiter.wake("changed")  # gone (retention): the caller re-reads and finds out
                else:
                    waiter.offer(version, status)

    async def run(self) -> None:
        """The periodic re-check, until cancelled or shut down. (asyncio.timeout, not wait_for:
        Python 3.11's wait_for can swallow a cancel that lands as the event is set.)"""
        while not self.stopping:
            try:
                async with asyncio.timeout(self.recheck_s):
                    await self._resync.wait()
            except TimeoutError:
                pass
            self._resync.clear()
            try:
                await self.recheck()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: the waits end; the next pass tries again
                log.warning("waiter re-check failed: %s", exc)
                self.unavailable()

    def shutdown(self) -> None:
        self.stopping = True
        for waiters in list(self._by_job.values()):
            for waiter in tuple(waiters):
                waiter.wake("stopping")
