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
