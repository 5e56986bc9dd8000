"""Three `visionjobs api` processes and two workers on one private Redis behave as one service:
a cancel made on one replica stops a job streamed (SSE) on a second and long-polled on a
third; one Idempotency-Key sent to all three at once makes one job; with five reapers (three
APIs, two workers) a job whose worker was SIGKILLed is re-queued exactly once."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.helpers import ALICE, auth
from tests.integration.procs import VISIONJOBS, Proc, wait_http
from tests.reliability.conftest import TINY, Cluster, RedisServer
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    server = RedisServer(tmp / "redis", aof=False)
    c = Cluster(tmp, server.url, VISIONJOBS_MAX_ATTEMPTS="3")
    extra: list[Proc] = []
    try:
        c.start_api()
        bases = [c.base]
        for i in range(2):
            port = free_port()
            extra.append(Proc([*VISIONJOBS, "api", "--port", str(port)], c.env, tmp / f"api-extra{i}.log"))
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(extra, bases[1:]):
            wait_http(f"{base}/healthz", proc, timeout=60)
        c.start_workers(2)
        c.upload()
        yield c, bases
    finally:
        for p in extra:
            p.stop()
        c.close()
        server.stop()


def post(base: str, path: str, body: dict | None = None, **headers) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, headers={**auth(ALICE), **headers}, timeout=30)


def stream(base: str, job_id: str, frames: list[dict], started: threading.Event) -> None:
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=auth(ALICE), timeout=60) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job":  # `event: log` frames carry log lines
                frames.append(json.loads(line[6:]))
                if frames[-1]["status"] == "running" and frames[-1]["progress"] > 0:
                    started.set()


def test_a_cancel_on_one_replica_ends_a_stream_on_another(replicas):
    c, (a, b, third) = replicas
    r = post(a, "/v1/colorizations", {"image": c.upload(), "seed": 1, "steps": 100, "sag_scale": 0})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    frames: list[dict] = []
    started = threading.Event()
    streamer = threading.Thread(target=stream, args=(b, job_id, frames, started))
    streamer.start()
    assert started.wait(60), frames  # replica b streams the progress the worker writes
    poll = {}
    poller = threading.Thread(target=lambda: poll.update(httpx.get(
        f"{a}/v1/jobs/{job_id}", params={"wait": 30}, headers=auth(ALICE), timeout=60).json()))
    poller.start()
    time.sleep(0.3)
    assert post(third, f"/v1/jobs/{job_id}/cancel").status_code == 200  # the cancel is made on the third
    streamer.join(timeout=30)
    poller.join(timeout=30)
    assert not streamer.is_alive(), "the stream on replica b did not end"
    assert frames[-1]["status"] == "canceled" and frames[-1]["progress"] < 0.9, frames[-1]
    assert poll.get("status") == "canceled", poll  # and the long-poll on replica a ended with it
    # the worker itself stopped (its log line may follow the final state by a moment)
    deadline = time.monotonic() + 30
    while f"job {job_id} -> canceled" not in c.worker_logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"job {job_id} -> canceled" in c.worker_logs()


def test_one_idempotency_key_on_three_replicas_makes_one_job(replicas):
    c, bases = replicas
    barrier = threading.Barrier(len(bases))
    answers: list[httpx.Response] = []

    def send(base):
        barrier.wait()
        answers.append(post(base, "/v1/colorizations", {"image": c.upload(), "seed": 2, **TINY},
                            **{"Idempotency-Key": "one-key-three-replicas"}))

    threads = [threading.Thread(target=send, args=(base,)) for base in bases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.status_code for r in answers) == [200, 200, 202], [r.text for r in answers]
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1
    assert c.wait_final(ids.pop())["status"] == "succeeded"
    assert sum(1 for starts in c.starts().values() for _ in starts) == len(c.starts())  # nothing ran twice


def test_five_reapers_requeue_a_lost_job_once(replicas):
    c, bases = replicas
    r = post(bases[1], "/v1/colorizations", {"image": c.upload(), "seed": 3, "steps": 40, "sag_scale": 0})
    job_id = r.json()["id"]
    c.wait_status(job_id, lambda j: j["status"] == "running" and j["progress"] > 0.1)
    os.kill(c.worker_pid(job_id), signal.SIGKILL)  # the launcher replaces the process
    final = c.wait_final(job_id, timeout=180)
    assert final["status"] == "succeeded" and final["attempt"] == 2, final
    requeues = [e for e in c.events(job_id) if e["stage"] == "requeued after lost worker"]
    assert len(requeues) == 1, c.events(job_id)
