"""Time limits at the process level: a worker with VISIONJOBS_JOB_TIME_LIMIT_S=2 fails an overlong
job with `timeout` (not retried), and the same process (same pid, no restart by the launcher)
runs the next job. CUDA out-of-memory cannot happen on a CPU machine; its handling is covered
in-process by tests/worker/test_runner.py."""
from __future__ import annotations

import os

import pytest

from tests.reliability.conftest import Cluster, RedisServer

pytestmark = pytest.mark.integration
LIMIT_S = 2.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timeout")
    server = RedisServer(tmp / "redis", aof=False)
    c = Cluster(tmp, server.url, VISIONJOBS_JOB_TIME_LIMIT_S=str(LIMIT_S))
    try:
        c.start_api()
        c.start_workers(1)
        yield c
    finally:
        c.close()
        server.stop()


def test_overlong_job_fails_with_timeout_and_the_same_worker_runs_the_next(limited):
    long = limited.submit(size=128, steps=100, num_outputs=2)  # ~10 s on one CPU core
    short = limited.submit(steps=2)
    failed = limited.wait_final(long["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "timeout", failed
    assert failed["attempt"] == 1 and failed["result"] is None
    assert f"{LIMIT_S:g} s" in failed["error"]["message"]
    ran_for = failed["finished_at"] and (_ts(failed["finished_at"]) - _ts(failed["started_at"]))
    assert LIMIT_S <= ran_for < LIMIT_S + 5, ran_for  # stopped at the first step past the limit
    assert limited.outputs(long["id"]) == []

    done = limited.wait_final(short["id"], timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    starts = limited.starts()
    (first,), (second,) = starts[long["id"]], starts[short["id"]]
    assert first.pid == second.pid  # the same worker process went on serving
    os.kill(first.pid, 0)  # and is still alive
    assert "exited with" not in limited.workers[0].log()  # the launcher never had to restart it


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- a job stuck inside one long call: the watchdog ends it, the launcher replaces the process ---

GRACE_S = 2.0


@pytest.fixture(scope="module")
def permissive(tmp_path_factory):
    """A worker that lets a hostile JPEG through to libjpeg (scan budget raised), 2 s limit."""
    tmp = tmp_path_factory.mktemp("watchdog")
    server = RedisServer(tmp / "redis", aof=False)
    c = Cluster(tmp, server.url, VISIONJOBS_JOB_TIME_LIMIT_S=str(LIMIT_S), VISIONJOBS_JOB_KILL_GRACE_S=str(GRACE_S),
                VISIONJOBS_MAX_IMAGE_SCANS="100000")
    try:
        c.start_api()
        c.start_workers(1)
        yield c
    finally:
        c.close()
        server.stop()


def _direct_upload(c: Cluster, data: bytes, width: int, height: int) -> str:
    """Stored as an upload without the API's check (as if made before the budget existed)."""
    from service.store.base import UploadRecord, new_id
    from service.store.redis_store import RedisJobStore

    upload_id = new_id("upl")
    rec = UploadRecord(id=upload_id, tenant="alice", filename="old.jpg", content_type="image/jpeg", size=len(data),
                       sha256="0" * 64, key=f"uploads/alice/{upload_id}", width=width, height=height)
    path = c.tmp / "data" / "objects" / rec.key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    store = RedisJobStore(c.redis_url)
    store.put_upload(rec)
    store.close()
    return upload_id


def test_a_job_stuck_in_one_long_decode_is_failed_once_and_its_process_replaced(permissive):
    import httpx

    from tests.helpers import ALICE, auth
    from tests.security.budget_data import progressive_jpeg_repeated_scans

    c = permissive
    image = _direct_upload(c, progressive_jpeg_repeated_scans(4096, 500), 4096, 4096)  # ~6 s inside libjpeg
    r = httpx.post(f"{c.base}/v1/colorizations", json={"image": image, "steps": 1, "sag_scale": 0, "seed": 1},
                   headers=auth(ALICE), timeout=30)
    assert r.status_code == 202, r.text
    stuck = c.wait_final(r.json()["id"], timeout=120)
    assert stuck["status"] == "failed" and stuck["error"]["code"] == "timeout", stuck
    assert stuck["attempt"] == 1 and stuck["result"] is None
    ran_for = _ts(stuck["finished_at"]) - _ts(stuck["started_at"])
    assert LIMIT_S + GRACE_S <= ran_for < LIMIT_S + GRACE_S + 2, ran_for  # not at the end of the decode
    (start,) = c.starts()[stuck["id"]]

    wait_for_log_text(c, "exited with 75", timeout=60)  # the launcher saw the watchdog's exit status
    after = c.submit(steps=1)
    done = c.wait_final(after["id"], timeout=240)  # served by the replacement process
    assert done["status"] == "succeeded", done
    (replacement,) = c.starts()[after["id"]]
    assert replacement.pid != start.pid
    finals = [e for e in c.events(stuck["id"]) if e.get("status") in ("succeeded", "failed", "canceled")]
    assert [e["status"] for e in finals] == ["failed"], finals  # the final state was written once
    assert c.get(stuck["id"])["error"] == stuck["error"] and c.outputs(stuck["id"]) == []


def wait_for_log_text(c: Cluster, text: str, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in c.worker_logs():
        assert time.monotonic() < deadline, c.worker_logs()[-3000:]
        time.sleep(0.2)
