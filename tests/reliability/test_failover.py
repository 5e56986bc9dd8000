"""A primary failover under load: one primary, one replica and three sentinels on private ports;
`visionjobs api` and two `visionjobs worker` processes find Redis through the sentinels only.

A burst of submissions runs while the primary is SIGKILLed. Every submission that got a 202
reaches a final state, and exactly one final transition is recorded per job (the event stream
on the new primary); the API and the workers carry on against the promoted replica without a
restart. Submissions made during the failover get 503 + Retry-After, never a 202 that is lost."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.helpers import ALICE, auth
from tests.redis_servers import SentinelSet
from tests.reliability.conftest import FINAL, TINY, Cluster

pytestmark = pytest.mark.integration
BURST_S = 25.0       # submissions keep coming for this long
KILL_AFTER = 6       # accepted jobs before the primary dies
AFTER_KILL = 6       # accepted jobs wanted after the failover


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failover")
    redis_set = SentinelSet(tmp / "redis")
    c = Cluster(tmp, "", VISIONJOBS_REDIS_SENTINELS=redis_set.addresses, VISIONJOBS_LEASE_S="3",
                VISIONJOBS_REDIS_WAIT_TIMEOUT_MS="1000")
    try:
        c.start_api()
        c.start_workers(2)
        yield redis_set, c
    finally:
        c.close()
        redis_set.stop()


def test_accepted_jobs_survive_a_primary_failover(rig):
    redis_set, c = rig
    old_port = redis_set.primary.port
    image = c.upload()
    accepted: list[tuple[str, float]] = []
    refused: list[tuple[int, str, str | None]] = []
    killed_at: list[float] = []
    stop = threading.Event()

    def burst():
        deadline = time.monotonic() + BURST_S
        while time.monotonic() < deadline and not stop.is_set():
            try:
                r = httpx.post(f"{c.base}/v1/colorizations", json={"image": image, "seed": 1, **TINY},
                               headers=auth(ALICE), timeout=30)
            except httpx.TransportError as exc:  # not an answer: the client cannot know, nothing promised
                refused.append((0, type(exc).__name__, None))
                continue
            if r.status_code == 202:
                accepted.append((r.json()["id"], time.monotonic()))
                if killed_at and sum(at > killed_at[0] for _, at in accepted) >= AFTER_KILL:
                    return
            else:
                assert r.status_code == 503, r.text
                assert r.headers.get("retry-after"), r.headers
                refused.append((r.status_code, r.json()["code"], r.headers["retry-after"]))
                time.sleep(0.1)

    thread = threading.Thread(target=burst)
    thread.start()
    try:
        while len(accepted) < KILL_AFTER:
            assert thread.is_alive(), "the burst ended before the kill"
            time.sleep(0.02)
        redis_set.primary.kill()
        killed_at.append(time.monotonic())
    finally:
        thread.join(timeout=BURST_S + 60)
        stop.set()
    after = [job_id for job_id, at in accepted if at > killed_at[0]]
    assert len(after) >= AFTER_KILL, (len(accepted), refused)  # the API reached the new primary
    new_port = redis_set.current_primary_port()
    assert new_port == redis_set.replica.port != old_port

    finals = {job_id: c.wait_final(job_id, timeout=180)["status"] for job_id, _ in accepted}
    assert set(finals.values()) == {"succeeded"}, finals
    primary = redis_set.replica.client()
    for job_id in finals:
        events = [f for _, f in primary.xrange(f"vj:events:{job_id}")]
        assert sum(e.get("status") in FINAL for e in events) == 1, (job_id, events)
    # the same processes throughout: nobody was restarted to find the new primary
    assert c.api.p.poll() is None and all(w.p.poll() is None for w in c.workers)
    started_after = {s.pid for job_id in after for s in c.starts().get(job_id, [])}
    assert started_after, "no worker ran a job submitted after the failover"
    print(f"\nfailover: {len(accepted)} accepted ({len(after)} after the kill), {len(refused)} refused: "
          f"{sorted({code for _, code, _ in refused})}; 0 accepted jobs lost")
