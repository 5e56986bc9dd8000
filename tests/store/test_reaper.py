"""The reaper gives live workers a lease to renew after a store outage before it reaps."""
from __future__ import annotations

import time

from service.dispatch import LocalDispatcher
from service.reaper import Reaper
from service.store.base import JobRecord, StoreUnavailable, new_id
from service.store.sqlite_store import SqliteJobStore


class FlakyStore(SqliteJobStore):
    down = False

    def reap_expired(self, now=None, limit=100):
        if self.down:
            raise StoreUnavailable("down")
        return super().reap_expired(now, limit)

    def ping(self):
        if self.down:
            raise StoreUnavailable("down")


def test_no_reaping_until_a_lease_has_passed_after_an_outage(tmp_path):
    store = FlakyStore(tmp_path / "jobs.sqlite3")
    job = JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={})
    store.create_job(job)
    store.claim(job.id, "w", 0.2)
    store.down = True
    reaper = Reaper(store, LocalDispatcher(), interval_s=0.05, grace_s=0.6)
    reaper.start()
    try:
        time.sleep(0.4)  # lease expired during the outage
        store.down = False
        time.sleep(0.3)  # store back, grace running: the worker would renew now
        assert store.get_job(job.id).status == "running"
        time.sleep(0.6)  # no renewal came within a lease: a lost worker after all
        assert store.get_job(job.id).status == "queued"
    finally:
        reaper.stop()


def test_a_queued_job_without_a_message_is_sent_again_once_per_period(redis_url):
    from service.reaper import reap_once
    from service.store.redis_store import RedisJobStore

    class Recorder:
        sent: list = []

        def dispatch(self, job_id, kind):
            self.sent.append(job_id)

    store = RedisJobStore(redis_url, prefix="vjreaper:")
    orphan = JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={}, created_at=time.time() - 10)
    sent = JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={}, created_at=time.time() - 10)
    young = JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={})
    for job in (orphan, sent, young):
        store.create_job(job)
    store.mark_dispatched(sent.id, 5)  # its message went out normally
    a, b = Recorder(), Recorder()
    a.sent, b.sent = [], []
    reap_once(store, a, redispatch_after_s=5)
    reap_once(store, b, redispatch_after_s=5)  # a second API process in the same period
    assert a.sent == [orphan.id] and b.sent == []
