"""The job store contract, run against both implementations (SQLite and the real Redis)."""
from __future__ import annotations

import threading
import time

import pytest

from service.store.base import JobRecord, UploadRecord, new_id


def make_job(store, tenant="t1", kind="colorize", max_attempts=3, idem=None):
    job = JobRecord(id=new_id("job"), tenant=tenant, kind=kind, params={"strokes": [], "seed": 7},
                    max_attempts=max_attempts)
    return store.create_job(job, idem)


def test_create_get_round_trip_keeps_params_and_queue_order(store):
    a, created = make_job(store)
    b, _ = make_job(store)
    assert created
    got = store.get_job(a.id)
    assert got.status == "queued" and got.params == {"strokes": [], "seed": 7}  # [] survives (no Lua JSON)
    assert store.queue_position(got) == 1
    assert store.queue_position(store.get_job(b.id)) == 2
    assert store.queue_depth("colorize") == 2
    assert store.get_job("job_000000000000000000000000") is None


def test_idempotency_key_returns_the_same_job_per_tenant(store):
    a, created_a = make_job(store, idem="k1")
    b, created_b = make_job(store, idem="k1")
    c, created_c = make_job(store, tenant="t2", idem="k1")
    assert created_a and not created_b and created_c
    assert a.id == b.id != c.id


def test_only_one_concurrent_claim_wins(store):
    job, _ = make_job(store)
    results = []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(store.claim(job.id, f"w{i}", 30).job)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].attempt == 1 and winners[0].status == "running"
    assert store.queue_position(store.get_job(job.id)) is None
    assert store.claim(job.id, "late", 30).reason == "not_queued"


def test_heartbeat_progress_bumps_version_and_reports_cancel(store):
    job, _ = make_job(store)
    job = store.claim(job.id, "w", 30).job
    assert store.heartbeat(job.id, 1, 30, progress=0.5, stage="denoising 1/2") is False
    after = store.get_job(job.id)
    assert after.progress == 0.5 and after.stage == "denoising 1/2" and after.version > job.version
    store.request_cancel(job.id)
    assert store.get_job(job.id).cancel_requested
    assert store.heartbeat(job.id, 1, 30) is True
    assert store.heartbeat(job.id, 2, 30) is True  # a wrong attempt must stop too


def test_cancel_queued_job_is_final_and_never_claimed(store):
    job, _ = make_job(store)
    canceled = store.request_cancel(job.id)
    assert canceled.status == "canceled" and canceled.error["code"] == "canceled"
    assert store.claim(job.id, "w", 30).reason == "canceled"
    assert store.queue_depth("colorize") == 0
    # cancelling a final job changes nothing
    assert store.request_cancel(job.id).version == canceled.version


def test_finish_needs_the_owning_attempt(store):
    job, _ = make_job(store)
    store.claim(job.id, "w", 30)
    assert store.finish(job.id, 2, "succeeded", result={"x": 1}) is None
    done = store.finish(job.id, 1, "succeeded", result={"images": []}, model_profile="tiny")
    assert done.status == "succeeded" and done.progress == 1.0 and done.result == {"images": []}
    assert done.model_profile == "tiny" and done.finished_at is not None
    assert store.finish(job.id, 1, "failed") is None  # final stays final


def test_expired_lease_requeues_then_fails_with_worker_lost(store):
    job, _ = make_job(store, max_attempts=2)
    store.claim(job.id, "w1", 0.2)
    time.sleep(0.35)
    assert store.reap_expired() == [job.id]
    requeued = store.get_job(job.id)
    assert requeued.status == "queued" and requeued.attempt == 1
    assert store.heartbeat(job.id, 1, 30) is True  # the lost attempt is told to stop
    second = store.claim(job.id, "w2", 0.2).job
    assert second.attempt == 2
    time.sleep(0.35)
    assert store.reap_expired() == []
    failed = store.get_job(job.id)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost"


def test_live_lease_is_not_reaped(store):
    job, _ = make_job(store)
    store.claim(job.id, "w", 0.3)
    for _ in range(3):
        time.sleep(0.15)
        store.heartbeat(job.id, 1, 0.3)
        assert store.reap_expired() == []
    assert store.get_job(job.id).status == "running"


def test_wait_for_change_wakes_on_update_and_times_out(store):
    job, _ = make_job(store)
    t0 = time.monotonic()
    assert store.wait_for_change(job.id, job.version, 0.3).version == job.version
    assert time.monotonic() - t0 >= 0.28
    threading.Timer(0.2, lambda: store.claim(job.id, "w", 30)).start()
    t0 = time.monotonic()
    changed = store.wait_for_change(job.id, job.version, 5)
    assert changed.status == "running" and time.monotonic() - t0 < 2


def test_list_jobs_pages_newest_first_with_filters(store):
    ids = [make_job(store)[0].id for _ in range(5)]
    make_job(store, tenant="other")
    store.request_cancel(ids[0])
    page1, cursor = store.list_jobs("t1", limit=2)
    page2, cursor2 = store.list_jobs("t1", limit=2, cursor=cursor)
    page3, cursor3 = store.list_jobs("t1", limit=2, cursor=cursor2)
    assert [j.id for j in page1 + page2 + page3] == ids[::-1] and cursor3 is None
    canceled, _ = store.list_jobs("t1", status="canceled")
    assert [j.id for j in canceled] == [ids[0]]
    assert store.list_jobs("t1", kind="nope")[0] == []


def test_uploads_and_counts(store):
    up = UploadRecord(id=new_id("upl"), tenant="t1", filename="a.png", content_type="image/png", size=3,
                      sha256="00", key="uploads/t1/x", width=2, height=1)
    store.put_upload(up)
    assert store.get_upload(up.id) == up
    job, _ = make_job(store)
    make_job(store)
    store.claim(job.id, "w", 30)
    counts = store.counts()
    assert counts[("colorize", "queued")] == 1 and counts[("colorize", "running")] == 1


def test_next_queued_is_oldest_of_given_kinds(store):
    a, _ = make_job(store)
    make_job(store, kind="other")
    assert store.next_queued(["colorize"]) == a.id
    store.claim(a.id, "w", 30)
    assert store.next_queued(["colorize"]) is None


def test_capabilities_are_fresh_only(store):
    store.put_capabilities("colorize", "w1", {"exemplar": False})
    store.put_capabilities("colorize", "w2", {"exemplar": True})
    assert sorted(c["exemplar"] for c in store.get_capabilities("colorize")) == [False, True]
    assert store.get_capabilities("other") == []
    time.sleep(0.05)
    assert store.get_capabilities("colorize", max_age_s=0.01) == []


def test_resources_are_tenant_indexed_and_deletable(store):
    a, b = new_id("tvm"), new_id("tvm")
    store.put_resource("tuned", a, "t1", {"name": "first", "files": []})
    store.put_resource("tuned", b, "t1", {"name": "second"})
    store.put_resource("tuned", new_id("tvm"), "t2", {"name": "other"})
    assert store.get_resource("tuned", a) == {"name": "first", "files": [], "id": a, "tenant": "t1"}
    assert [d["id"] for d in store.list_resources("tuned", "t1")] == [b, a]
    assert store.delete_resource("tuned", a) and not store.delete_resource("tuned", a)
    assert store.get_resource("tuned", a) is None and [d["id"] for d in store.list_resources("tuned", "t1")] == [b]
    assert store.get_resource("other-kind", b) is None


def test_resources_page_newest_first_after_a_cursor(store):
    ids = [new_id("tvm") for _ in range(5)]
    for i in ids:
        store.put_resource("tuned", i, "t1", {})
    store.put_resource("tuned", new_id("tvm"), "t2", {})
    newest = ids[::-1]
    assert [d["id"] for d in store.list_resources("tuned", "t1", limit=2)] == newest[:2]
    assert [d["id"] for d in store.list_resources("tuned", "t1", cursor=newest[1], limit=2)] == newest[2:4]
    assert [d["id"] for d in store.list_resources("tuned", "t1", cursor=newest[3])] == newest[4:]
    assert store.list_resources("tuned", "t1", cursor=newest[4], limit=2) == []


    async def async_side():  # the API reads through the async store
        astore = store.open_async()
        try:
            return [d["id"] for d in await astore.list_resources("tuned", "t1", cursor=newest[0], limit=3)]
        finally:
            await astore.aclose()

    import asyncio

    assert asyncio.run(async_side()) == newest[1:4]


def test_active_jobs_count_queued_and_running_only(store):
    a, _ = make_job(store)
    b, _ = make_job(store)
    c, _ = make_job(store)
    make_job(store, tenant="t2")
    assert store.active_jobs("t1") == 3
    store.claim(a.id, "w", 30)
    store.request_cancel(b.id)
    assert store.active_jobs("t1") == 2
    store.finish(a.id, 1, "succeeded", result={})
    assert store.active_jobs("t1") == 1
    store.claim(c.id, "w", 0.1)
    time.sleep(0.2)
    store.reap_expired()  # back to queued: still active
    assert store.active_jobs("t1") == 1 and store.active_jobs("t2") == 1


def test_transitions_into_subscribed_states_enqueue_webhooks_once(store):
    job = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={}, webhook_events=",running,succeeded,")
    store.create_job(job)
    quiet, _ = make_job(store)
    store.claim(job.id, "w", 30)
    store.claim(quiet.id, "w", 30)
    assert store.claim_due_webhooks() == [(job.id, "running")]
    assert store.claim_due_webhooks() == []  # handed out once
    store.finish(job.id, 1, "succeeded", result={})
    store.finish(quiet.id, 1, "succeeded", result={})
    assert store.claim_due_webhooks() == [(job.id, "succeeded")]
    store.schedule_webhook(job.id, "succeeded", 0.2)
    assert store.claim_due_webhooks() == []
    time.sleep(0.25)
    assert store.claim_due_webhooks() == [(job.id, "succeeded")]
    store.record_webhook(job.id, "succeeded", {"status": "delivered", "attempts": 2})
    assert store.get_job(job.id).webhook_deliveries == {"succeeded": {"status": "delivered", "attempts": 2}}


def test_webhook_on_cancel_and_worker_lost(store):
    a = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={}, webhook_events=",canceled,failed,")
    b = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={}, webhook_events=",canceled,failed,",
                  max_attempts=1)
    store.create_job(a)
    store.create_job(b)
    store.request_cancel(a.id)
    store.claim(b.id, "w", 0.1)
    time.sleep(0.2)
    store.reap_expired()
    assert sorted(store.claim_due_webhooks()) == sorted([(a.id, "canceled"), (b.id, "failed")])


def test_queued_ids_oldest_first(store):
    ids = [make_job(store)[0].id for _ in range(4)]
    make_job(store, kind="other")
    store.claim(ids[1], "w", 30)
    assert store.queued_ids("colorize", 2) == [ids[0], ids[2]]
    assert store.queued_ids("colorize", 10) == [ids[0], ids[2], ids[3]]


def test_partial_result_while_running_and_after_a_failure(store):
    job, _ = store.create_job(JobRecord(id=new_id("job"), tenant="t", kind="anomaly.fit", params={}))
    claimed = store.claim(job.id, "w", 30).job
    partial = {"training": {"epoch": 1, "history": [{"epoch": 1, "image_auroc": 0.5}]}}
    assert store.heartbeat(job.id, claimed.attempt, 30, progress=0.2, stage="epoch 1/3", result=partial) is False
    assert store.get_job(job.id).result == partial and store.get_job(job.id).stage == "epoch 1/3"
    store.heartbeat(job.id, claimed.attempt, 30, progress=0.3, stage="epoch 2/3 step 1/2")  # progress only
    assert store.get_job(job.id).result == partial
    done = store.finish(job.id, claimed.attempt, "canceled", error={"code": "canceled", "message": "x"})
    assert done.result == partial and store.get_job(job.id).result == partial  # what it did stays visible


# --- idempotency bound to the request, discarded submissions, conditional resource writes ---

def test_a_key_reused_with_another_fingerprint_is_refused_and_finds_its_job(store):
    from service.store.base import IdempotencyMismatch

    job = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={"seed": 1})
    first, created = store.create_job(job, "k", "fp-a")
    assert created
    assert store.find_idempotent("t1", "k", "fp-a").id == first.id
    assert store.find_idempotent("t1", "other", "fp-a") is None
    assert store.find_idempotent("t2", "k", "fp-b") is None  # keys are per tenant
    try:
        store.find_idempotent("t1", "k", "fp-b")
        raise AssertionError("a different fingerprint must be refused")
    except IdempotencyMismatch as exc:
        assert exc.job_id == first.id
    again = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={"seed": 2})
    try:
        store.create_job(again, "k", "fp-b")
        raise AssertionError("a different fingerprint must be refused")
    except IdempotencyMismatch:
        pass
    assert store.get_job(again.id) is None and store.queue_depth("colorize") == 1
    assert store.create_job(again, "k", "fp-a")[0].id == first.id


def test_a_discarded_job_leaves_nothing_and_frees_its_key(store):
    job, _ = make_job(store, idem="k")
    assert store.active_jobs("t1") == 1
    assert store.discard_job(job.id) is True
    assert store.get_job(job.id) is None
    assert store.find_idempotent("t1", "k") is None
    assert store.queue_depth("colorize") == 0 and store.active_jobs("t1") == 0
    assert store.list_jobs("t1")[0] == [] and store.list_jobs("t1", status="queued")[0] == []
    assert store.counts().get(("colorize", "queued"), 0) == 0
    assert store.next_queued(["colorize"]) is None
    fresh, created = make_job(store, idem="k")
    assert created and fresh.id != job.id and fresh.status == "queued"
    assert store.discard_job(job.id) is False  # already gone


def test_a_claimed_job_is_never_discarded(store):
    job, _ = make_job(store, idem="k")
    store.claim(job.id, "w", 30)
    assert store.discard_job(job.id) is False
    assert store.get_job(job.id).status == "running"
    assert store.find_idempotent("t1", "k").id == job.id


def test_update_resource_never_brings_a_deleted_one_back(store):
    store.put_resource("anomaly_model", "anm_1", "t1", {"name": "m", "thresholds": {"image": 1.0}})
    assert store.update_resource("anomaly_model", "anm_1", "t1", {"name": "m", "thresholds": {"image": 2.0}})
    assert store.get_resource("anomaly_model", "anm_1")["thresholds"] == {"image": 2.0}
    assert store.delete_resource("anomaly_model", "anm_1")
    assert store.update_resource("anomaly_model", "anm_1", "t1", {"name": "m", "thresholds": {"image": 3.0}}) is False
    assert store.get_resource("anomaly_model", "anm_1") is None
    assert store.list_resources("anomaly_model", "t1") == []


def test_byte_ledgers_refuse_past_the_limit_and_free_what_expires(store):
    assert store.charge_bytes("t1", "uploads", "u1", 600, 3600, 1000)[0]
    ok, used, wait = store.charge_bytes("t1", "uploads", "u2", 500, 3600, 1000)
    assert not ok and used == 600 and 3500 < wait <= 3600
    assert store.charge_bytes("t2", "uploads", "u2", 500, 3600, 1000)[0]  # per tenant
    assert store.charge_bytes("t1", "params", "u2", 500, 3600, 1000)[0]   # per ledger
    assert store.charge_bytes("t1", "uploads", "u1", 900, 3600, 1000)[0]  # replacing an item counts it once
    store.release_bytes("t1", "uploads", "u1")
    assert store.charge_bytes("t1", "uploads", "u3", 1000, 0.2, 1000) == (True, 0, 0.0)
    time.sleep(0.3)  # u3's time is over: its bytes no longer count
    ok, used, _ = store.charge_bytes("t1", "uploads", "u4", 1000, 3600, 1000)
    assert ok and used == 0
    assert store.charge_bytes("t1", "uploads", "u5", 10**12, 3600, 0)[0]  # 0: no limit


def test_an_artifacts_stored_bytes_count_until_it_is_deleted(store):
    from service.store.base import ARTIFACTS

    store.put_resource("anomaly_model", "anm_1", "t1", {"prefix": "anomaly/t1/anm_1/", "stored_bytes": 700})
    store.put_resource("subject_model", "sbm_1", "t1", {"prefix": "subject/t1/sbm_1/", "stored_bytes": 300})
    store.put_resource("anomaly_model", "anm_2", "t2", {"prefix": "anomaly/t2/anm_2/", "stored_bytes": 5})
    store.put_resource("anomaly_model", "anm_3", "t1", {"prefix": "anomaly/t1/anm_3/"})  # made before sizes
    assert store.bytes_used("t1", ARTIFACTS) == 1000 and store.bytes_used("t2", ARTIFACTS) == 5
    store.put_resource("anomaly_model", "anm_1", "t1", {"prefix": "anomaly/t1/anm_1/", "stored_bytes": 100})  # a re-run
    assert store.bytes_used("t1", ARTIFACTS) == 400
    assert store.delete_resource("anomaly_model", "anm_1")
    assert store.bytes_used("t1", ARTIFACTS) == 300


def test_queue_stats_give_depth_oldest_age_and_busy_workers_per_kind(store):
    old = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={}, created_at=time.time() - 42)
    store.create_job(old)
    running = [make_job(store)[0] for _ in range(3)]
    make_job(store, kind="video.edit")
    assert store.claim(old.id, "host-a:1", 30).job is not None
    store.claim(running[0].id, "host-a:1", 30)  # a batch: the same worker process holds two jobs
    store.claim(running[1].id, "host-b:7", 30)
    stats = store.queue_stats(["colorize", "video.edit", "anomaly.fit"])
    assert stats["colorize"].depth == 1 and stats["colorize"].busy_workers == 2
    assert 0 <= stats["colorize"].oldest_age_s < 30  # the oldest *queued* one: the 42 s old job runs
    assert stats["video.edit"].depth == 1 and stats["video.edit"].busy_workers == 0
    assert stats["anomaly.fit"].depth == 0 and stats["anomaly.fit"].oldest_age_s == 0.0
    queued_old = JobRecord(id=new_id("job"), tenant="t1", kind="anomaly.fit", params={}, created_at=time.time() - 42)
    store.create_job(queued_old)
    assert 41 <= store.queue_stats(["anomaly.fit"])["anomaly.fit"].oldest_age_s < 60


def test_worker_owned_fields_written_with_a_beat_and_the_final_write(store):
    job, _ = store.create_job(JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={}))
    claimed = store.claim(job.id, "w1", 30).job
    logs = {"total": 2, "lines": ["a", "b"]}
    store.heartbeat(job.id, claimed.attempt, 30, extra={"logs": logs})
    running = store.get_job(job.id)
    assert running.logs == logs and running.version > claimed.version  # a beat with logs wakes readers
    store.finish(job.id, claimed.attempt, "succeeded", result={}, extra={
        "logs": {"total": 3, "lines": ["a", "b", "c"]}, "metrics": {"queue_s": 0.5, "load_s": 0.0, "run_s": 1.0,
                                                                     "upload_s": 0.1},
        "weights_fingerprint": "tiny:0123"})
    done = store.get_job(job.id)
    assert done.logs["total"] == 3 and done.metrics["run_s"] == 1.0 and done.weights_fingerprint == "tiny:0123"
    listed = store.list_jobs("t")[0][0]
    assert listed.logs is None and listed.metrics["queue_s"] == 0.5  # list pages carry no logs
    with pytest.raises(ValueError):
        store.heartbeat(job.id, claimed.attempt, 30, extra={"status": "failed"})


def test_each_webhook_event_keeps_the_job_as_of_the_event(store):
    job = JobRecord(id=new_id("job"), tenant="t1", kind="colorize", params={"p": 1}, webhook_events=",running,succeeded,")
    store.create_job(job)
    claimed = store.claim(job.id, "w", 30).job
    store.heartbeat(job.id, 1, 30, progress=0.5, stage="denoising 1/2")
    store.finish(job.id, 1, "succeeded", result={"images": []})
    running, done = store.webhook_snapshot(job.id, "running"), store.webhook_snapshot(job.id, "succeeded")
    assert running.status == "running" and running.progress == 0.0 and running.result is None
    assert running.version == claimed.version and running.params == {"p": 1}
    assert done.status == "succeeded" and done.result == {"images": []} and done.version == store.get_job(job.id).version
    store.drop_webhook_snapshot(job.id, "running")
    assert store.webhook_snapshot(job.id, "running") is None and store.webhook_snapshot(job.id, "succeeded")
    quiet, _ = make_job(store)
    store.claim(quiet.id, "w", 30)
    assert store.webhook_snapshot(quiet.id, "running") is None  # no webhook: no copy


def test_job_metric_histograms_count_per_kind_and_bucket(store):
    from service.store.base import METRIC_BUCKETS

    store.observe_job_metrics("colorize", {"queue_s": 0.01, "load_s": 3.0, "run_s": 7.5, "upload_s": 0.2})
    store.observe_job_metrics("colorize", {"queue_s": 0.02, "load_s": 0.0, "run_s": 9999.0, "upload_s": 0.1})
    store.observe_job_metrics("video.edit", {"queue_s": 1.0, "load_s": 0.0, "upload_s": 0.1})  # no run_s: failed early
    hists = store.job_metric_histograms()
    buckets, total, count = hists[("colorize", "run_s")]
    assert count == 2 and total == pytest.approx(10006.5) and sum(buckets) == 2
    assert buckets[METRIC_BUCKETS.index(10.0)] == 1 and buckets[-1] == 1  # 7.5 s <= 10 s; 9999 s: +Inf
    assert hists[("colorize", "queue_s")][0][0] == 2 and ("video.edit", "run_s") not in hists
