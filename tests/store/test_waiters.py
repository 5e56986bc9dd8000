"""The change hub: notifications fan out to waiters, a missed one is found by the re-check, and
the async stores feed it (the Redis one from the transition scripts' channel)."""
from __future__ import annotations

import asyncio
import secrets

import pytest

from service.store.base import JobRecord, new_id
from service.waiters import ChangeHub, TooManyWaiters
from tests.conftest import TEST_REDIS_URL


def run(coro):
    return asyncio.run(coro)


def test_waiters_wake_on_newer_versions_and_long_polls_only_on_final_ones():
    async def scenario():
        hub = ChangeHub(lambda ids: asyncio.sleep(0, {}), max_per_tenant=10)
        any_change = hub.watch("t", "job_a", 3)
        final_only = hub.watch("t", "job_a", 3, final_only=True)
        hub.publish("job_a", 3, "running")  # not newer
        hub.publish("job_a", 4, "running")
        assert await any_change.wait(5) == "changed"
        assert await final_only.wait(0.05) == "timeout"
        hub.publish("job_a", 5, "succeeded")
        assert await final_only.wait(5) == "changed"
        any_change.close(), final_only.close()
        assert hub.count() == 0 and hub.jobs_watched() == 0

    run(scenario())


def test_a_change_between_the_read_and_the_watch_is_not_lost():
    async def scenario():
        hub = ChangeHub(lambda ids: asyncio.sleep(0, {}), max_per_tenant=10)
        hub.publish("job_a", 8, "canceled")  # arrives before the waiter registers (it read version 7)
        with hub.watch("t", "job_a", 7, final_only=True) as w:
            assert await w.wait(5) == "changed"

    run(scenario())


def test_a_missed_notification_is_found_by_the_recheck():
    async def scenario():
        store_versions = {"job_a": (1, "queued")}

        async def versions(ids):
            return {i: store_versions[i] for i in ids if i in store_versions}

        hub = ChangeHub(versions, max_per_tenant=10, recheck_s=0.05)
        task = asyncio.create_task(hub.run())
        with hub.watch("t", "job_a", 1, final_only=True) as w:
            store_versions["job_a"] = (2, "failed")  # changed, and nobody published it
            assert await w.wait(10) == "changed"
        with hub.watch("t", "job_gone", 1) as w:  # deleted meanwhile: woken to find out
            assert await w.wait(10) == "changed"
        task.cancel()

    run(scenario())


def test_the_cap_is_per_tenant_and_stopping_wakes_everyone():
    async def scenario():
        hub = ChangeHub(lambda ids: asyncio.sleep(0, {}), max_per_tenant=2)
        a, b = hub.watch("t", "job_a", 1), hub.watch("t", "job_b", 1)
        with pytest.raises(TooManyWaiters) as exc:
            hub.watch("t", "job_c", 1)
        assert exc.value.limit == 2
        other = hub.watch("u", "job_a", 1)
        a.close()
        c = hub.watch("t", "job_c", 1)
        hub.shutdown()
        assert {await w.wait(5) for w in (b, c, other)} == {"stopping"}
        assert await hub.watch("u", "job_d", 1).wait(5) == "stopping"

    run(scenario())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_async_stores_feed_the_hub_from_the_sync_stores_transitions(kind, tmp_path):
    if kind == "sqlite":
        from service.store.sqlite_store import SqliteJobStore

        sync = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from service.store.redis_store import RedisJobStore

        sync = RedisJobStore(TEST_REDIS_URL, prefix=f"vjtest:{secrets.token_hex(4)}:")
    job = JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={})
    sync.create_job(job)

    async def scenario():
        astore = sync.open_async()
        hub = ChangeHub(astore.versions, max_per_tenant=10, recheck_s=3600)  # no re-check: notifications only
        listener = asyncio.create_task(astore.listen(hub))
        try:
            while not hub._resync.is_set():  # the listener is subscribed
                await asyncio.sleep(0.01)
            current = await astore.get_job(job.id)
            with hub.watch("t", job.id, current.version) as w:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, sync.claim, job.id, "w", 30)  # a worker, elsewhere
                assert await w.wait(10) == "changed"
                running = await astore.get_job(job.id)
                assert running.status == "running"
                w.seen(running.version)
                await loop.run_in_executor(None, lambda: sync.heartbeat(job.id, 1, 30, progress=0.5, stage="s"))
                assert await w.wait(10) == "changed"
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await astore.aclose()

    try:
        run(scenario())
    finally:
        if kind == "redis":
            for key in sync.r.scan_iter(f"{sync.p}*"):
                sync.r.delete(key)


def test_losing_the_store_ends_every_wait():
    async def scenario():
        hub = ChangeHub(lambda ids: asyncio.sleep(0, {}), max_per_tenant=10)
        a, b = hub.watch("t", "job_a", 1, final_only=True), hub.watch("u", "job_b", 1)
        hub.unavailable()
        assert [await a.wait(5), await b.wait(5)] == ["unavailable", "unavailable"]

    run(scenario())


def test_waiters_of_one_job_share_its_read_and_a_hang_up_takes_nothing_from_the_others(monkeypatch):
    from service.api.routes import jobs as routes

    reads = []

    class Store:
        async def read_job(self, job_id):
            reads.append(job_id)
            await asyncio.sleep(0.1)
            return JobRecord(id=job_id, tenant="t", kind="colorize", params={}, status="succeeded")

    class Ctx:
        astore = Store()

    async def render(ctx, job, base):
        return f'{{"id": "{job.id}"}}'

    monkeypatch.setattr(routes, "render_json", render)

    async def scenario():
        shared = routes.SharedReads()
        first = asyncio.ensure_future(shared.get(Ctx(), "job_a", "http://x"))
        second = asyncio.ensure_future(shared.get(Ctx(), "job_a", "http://x"))
        await asyncio.sleep(0.02)
        first.cancel()  # its client hung up while the read was in flight
        job, body = await second
        assert job.status == "succeeded" and body == '{"id": "job_a"}' and reads == ["job_a"]
        await shared.get(Ctx(), "job_a", "http://x")  # nothing cached: a later call reads again
        assert reads == ["job_a", "job_a"]

    run(scenario())
