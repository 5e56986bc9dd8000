"""A worker scaled down (SIGTERM to `visionjobs worker`) never loses its job: a job that outlives
VISIONJOBS_DRAIN_TIMEOUT_S is handed back to the queue at once (no lease to wait out, no attempt
spent) and finished by a worker that stays; the stopped launcher exits cleanly. Leases here are
far longer than the test, so only the hand-back can move the job."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.reliability.conftest import Cluster, RedisServer

pytestmark = pytest.mark.integration
LEASE_S = 120.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drain")
    server = RedisServer(tmp / "redis", aof=False)
    c = Cluster(tmp, server.url, VISIONJOBS_LEASE_S=str(LEASE_S), VISIONJOBS_DRAIN_TIMEOUT_S="1",
                VISIONJOBS_MAX_ATTEMPTS="1")
    try:
        c.start_api()
        c.start_workers(1)
        yield c
    finally:
        c.close()
        server.stop()


def test_a_stopping_worker_hands_its_job_back(rig):
    c = rig
    job = c.submit(steps=100)
    c.wait_status(job["id"], lambda j: j["status"] == "running" and j["progress"] > 0.05)
    leaving = c.workers[0]
    pid = c.worker_pid(job["id"])
    os.kill(leaving.p.pid, signal.SIGTERM)  # the launcher: forwarded to its process, as a scale-down does
    stopped_at = time.monotonic()
    assert leaving.p.wait(timeout=60) == 0
    [staying] = c.start_workers(1)  # the queue keeps it until a worker comes
    final = c.wait_final(job["id"], timeout=120)
    assert final["status"] == "succeeded", final  # max_attempts 1: the hand-back cost no attempt
    assert final["attempt"] == 2
    stages = [e["stage"] for e in c.events(job["id"])]
    assert "handed back by a stopping worker" in stages, stages
    assert "requeued after lost worker" not in stages  # not the lease: it has not run out
    assert time.monotonic() - stopped_at < LEASE_S
    runs = c.starts()[job["id"]]
    assert [s.pid for s in runs][0] == pid and runs[1].pid != pid
    assert f"job {job['id']} attempt 1 handed back to the queue" in leaving.log()
