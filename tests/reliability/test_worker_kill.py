"""Worker SIGKILL mid-job: the lease expires, the reaper re-queues the job, another worker runs
it (never two at once), outputs land once at fixed keys; killed on every attempt it fails with
`worker_lost` after VISIONJOBS_MAX_ATTEMPTS (2 in this cluster)."""
from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.reliability.conftest import LEASE_S

pytestmark = pytest.mark.integration
# A lease is renewed by every progress write (0.1 s apart) and by a heartbeat every LEASE_S/3, so
# it runs out at least LEASE_S - LEASE_S/3 after the process died.
MIN_GAP_S = LEASE_S * 2 / 3 - 0.05


def kill_running(cluster, job_id: str, attempt: int) -> tuple[int, float]:
    """SIGKILL the worker process running `attempt` of the job, once it is into the denoising."""
    cluster.wait_status(job_id, lambda j: j["status"] == "running" and j["attempt"] == attempt
                        and j["progress"] >= 0.1, timeout=120)
    pid = cluster.worker_pid(job_id)
    os.kill(pid, signal.SIGKILL)
    return pid, time.time()


def compress(statuses: list[str]) -> list[str]:
    return [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]


def assert_attempts_never_overlap(cluster, job_id: str, kills: list[tuple[int, float]]) -> list[str]:
    """Each re-run started only after the previous attempt's process was dead and its lease had
    run out, both in the worker logs and in the job's event history (Redis server time)."""
    starts = sorted(cluster.starts()[job_id], key=lambda s: s.attempt)
    for (pid, killed_at), before, after in zip(kills, starts, starts[1:]):
        assert before.pid == pid and after.pid != pid and after.attempt == before.attempt + 1
        assert after.at - killed_at >= MIN_GAP_S, (after, killed_at)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    events = cluster.events(job_id)
    statuses = compress([e["status"] for e in events])
    requeues = [i for i, e in enumerate(events) if e["stage"] == "requeued after lost worker"]
    for i in requeues:
        # the last word of the dead attempt, then the reaper, then (maybe) the next claim
        assert events[i - 1]["status"] == "running" and events[i]["at"] - events[i - 1]["at"] >= MIN_GAP_S, events
        nxt = events[i + 1:]
        assert not nxt or nxt[0]["status"] in ("running", "failed"), events
    return statuses


def test_killed_worker_job_is_rerun_after_its_lease_and_succeeds_once(cluster):
    job = cluster.submit(steps=60, num_outputs=2)
    kill = kill_running(cluster, job["id"], attempt=1)
    final = cluster.wait_final(job["id"], timeout=120)
    assert final["status"] == "succeeded" and final["attempt"] == 2, final
    starts = cluster.starts()[job["id"]]
    assert [s.attempt for s in sorted(starts, key=lambda s: s.attempt)] == [1, 2]
    statuses = assert_attempts_never_overlap(cluster, job["id"], [kill])
    assert statuses == ["queued", "running", "queued", "running", "succeeded"], statuses
    # exactly one final write, by the second attempt's process
    finishes = cluster.finishes()[job["id"]]
    assert [(f[0], f[1]) for f in finishes] == [("succeeded", max(starts, key=lambda s: s.attempt).pid)]
    # fixed keys: the outputs exist once, and the signed URLs serve them
    assert cluster.outputs(job["id"]) == ["output_0.png", "output_1.png"]
    assert [i["url"].split("?")[0].rsplit("/", 1)[1] for i in final["result"]["images"]] == ["output_0.png",
                                                                                              "output_1.png"]
    for image in final["result"]["images"]:
        r = httpx.get(image["url"], timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_killed_on_every_attempt_fails_with_worker_lost(cluster):
    job = cluster.submit(steps=100)
    kills = [kill_running(cluster, job["id"], attempt=1)]
    kills.append(kill_running(cluster, job["id"], attempt=2))
    final = cluster.wait_final(job["id"], timeout=60)
    assert final["status"] == "failed" and final["attempt"] == 2, final
    assert final["error"]["code"] == "worker_lost", final["error"]
    statuses = assert_attempts_never_overlap(cluster, job["id"], kills)
    assert statuses == ["queued", "running", "queued", "running", "failed"], statuses
    events = cluster.events(job["id"])
    assert events[-1]["at"] - kills[-1][1] >= MIN_GAP_S - 0.1  # failed only once the last lease ran out
    time.sleep(LEASE_S)  # nothing re-runs it afterwards
    assert len(cluster.starts()[job["id"]]) == 2
    assert job["id"] not in cluster.finishes()
    assert cluster.outputs(job["id"]) == []
