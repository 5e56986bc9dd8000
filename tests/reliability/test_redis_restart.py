"""Redis restarts under a live cluster: a private redis-server (AOF, appendfsync everysec) that the
test stops cleanly (SHUTDOWN) and kills (SIGKILL), with api + worker processes against it.

While Redis is down the API answers 503 problem+json at once (job reads, long-polls,
submissions, /readyz), never hangs; once it is back, API and worker carry on without a restart
and every accepted job reaches its final state. A restart shorter than the lease costs a running
job nothing (it finishes on its first attempt). Measured and printed: the 503 latencies, and how
many submissions accepted in the last second before a SIGKILL were lost."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.helpers import ALICE, auth
from tests.reliability.conftest import Cluster, RedisServer, problem

pytestmark = pytest.mark.integration
LEASE_S = 10.0  # longer than any outage below: a restart must not cost a running job its attempt
FAST_S = 3.0    # "at once": well under any client timeout, nowhere near a hang


@pytest.fixture
def rig(redis_rig):
    yield redis_rig
    server, _ = redis_rig
    if server.proc.poll() is not None:  # a failed test left Redis down: the next one needs it
        server.start()


@pytest.fixture(scope="module")
def redis_rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis-restart")
    server = RedisServer(tmp / "redis")
    c = Cluster(tmp, server.url, VISIONJOBS_LEASE_S=str(LEASE_S))
    try:
        c.start_api()
        c.start_workers(1)
        c.upload()
        yield server, c
    finally:
        c.close()
        server.stop()


def timed(method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = httpx.request(method, url, headers=auth(ALICE), timeout=30, **kwargs)
    return r, time.monotonic() - t


def probe_down(c: Cluster, job_id: str) -> dict[str, float]:
    """Every call answers 503 problem+json quickly while Redis is down; returns the latencies."""
    latencies = {}
    calls = {"GET job": ("GET", f"/v1/jobs/{job_id}", {}),
             "GET job ?wait=5": ("GET", f"/v1/jobs/{job_id}", {"params": {"wait": 5}}),
             "POST colorization": ("POST", "/v1/colorizations", {"json": {"image": c.upload(), "steps": 1}}),
             "GET /readyz": ("GET", "/readyz", {})}
    for name, (method, path, kwargs) in calls.items():
        r, latencies[name] = timed(method, c.base + path, **kwargs)
        assert r.status_code == 503, (name, r.status_code, r.text)
        body = problem(r)
        assert r.headers.get("retry-after"), name
        assert body["code"] in ("store_unavailable", "not_ready"), body
        assert latencies[name] < FAST_S, (name, latencies[name])
    assert httpx.get(f"{c.base}/healthz").status_code == 200  # alive, just not ready
    return latencies


def wait_ready(c: Cluster, timeout: float = 30) -> float:
    t = time.monotonic()
    while httpx.get(f"{c.base}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() - t < timeout, "the API did not become ready again"
        time.sleep(0.1)
    return time.monotonic() - t


def worker_pid(c: Cluster) -> int:
    return max((s for starts in c.starts().values() for s in starts), key=lambda s: s.at).pid


def assert_same_processes(c: Cluster, api_pid: int, pid: int) -> None:
    assert c.api.p.pid == api_pid and c.api.p.poll() is None
    assert worker_pid(c) == pid
    assert "exited with" not in c.workers[0].log()  # the launcher never restarted the worker


def test_clean_restart_503_while_down_then_every_job_finishes(rig):
    server, c = rig
    jobs = [c.submit(steps=40, seed=i)["id"] for i in range(4)]  # ~1 s each, one worker
    c.wait_status(jobs[0], lambda j: j["status"] == "running" and j["progress"] >= 0.2)
    api_pid, pid = c.api.p.pid, c.worker_pid(jobs[0])
    parked = []  # a long-poll in flight when Redis goes away is answered, not left hanging

    def long_poll():
        r, _ = timed("GET", f"{c.base}/v1/jobs/{jobs[-1]}", params={"wait": 30})
        parked.append((r, time.monotonic()))

    streamed = {}  # and an SSE stream in flight ends (cleanly: the client reconnects), not hangs

    def stream():
        streamed["text"], streamed["error"] = "", None
        try:
            with httpx.stream("GET", f"{c.base}/v1/jobs/{jobs[-1]}/events", headers=auth(ALICE),
                              timeout=httpx.Timeout(10, read=60)) as r:
                for chunk in r.iter_text():
                    streamed["text"] += chunk
        except httpx.HTTPError as exc:
            streamed["error"] = exc
        streamed["ended"] = time.monotonic()

    poller, streamer = threading.Thread(target=long_poll), threading.Thread(target=stream)
    poller.start()
    streamer.start()
    time.sleep(0.3)

    down_at = time.monotonic()
    server.shutdown()
    latencies = probe_down(c, jobs[0])
    poller.join(timeout=FAST_S + 3)
    assert parked, "a long-poll hung while Redis was down"
    assert parked[0][0].status_code == 503, parked[0][0].text
    latencies["GET job ?wait=30 in flight"] = parked[0][1] - down_at
    assert latencies["GET job ?wait=30 in flight"] < FAST_S
    streamer.join(timeout=FAST_S)
    assert "ended" in streamed, "an SSE stream hung while Redis was down"
    latencies["SSE stream in flight"] = streamed["ended"] - down_at
    assert latencies["SSE stream in flight"] < FAST_S
    assert streamed["error"] is None, f"SSE stream cut instead of ended: {streamed['error']!r}"
    assert "event: job" in streamed["text"]
    server.start()
    outage = time.monotonic() - down_at
    ready_after = wait_ready(c)

    after = c.submit(steps=1)["id"]  # the API's queue producer reconnected by itself
    finals = [c.wait_final(job_id, timeout=90) for job_id in [*jobs, after]]
    assert [f["status"] for f in finals] == ["succeeded"] * 5, [f["error"] for f in finals]
    assert all(f["attempt"] == 1 for f in finals), [f["attempt"] for f in finals]
    assert all(len(c.starts()[f["id"]]) == 1 for f in finals)
    assert_same_processes(c, api_pid, pid)
    print(f"\nclean restart: outage {outage:.1f} s, ready {ready_after:.2f} s after Redis was back; "
          f"503 latencies {json.dumps({k: round(v, 3) for k, v in latencies.items()})}")


def test_sigkill_after_aof_flush_loses_nothing_and_measures_the_last_second(rig):
    server, c = rig
    api_pid = c.api.p.pid
    pid = worker_pid(c)

    # 1. Accepted more than a second before the kill: AOF everysec has written them: all finish.
    jobs = [c.submit(steps=30, seed=i)["id"] for i in range(4)]
    time.sleep(1.5)
    server.kill()
    probe_down(c, jobs[0])
    server.start()
    wait_ready(c)
    finals = [c.wait_final(job_id, timeout=90) for job_id in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * len(jobs), [f["error"] for f in finals]
    assert all(f["attempt"] == 1 for f in finals)

    # 2. Submissions up to the instant of the kill: which of the accepted ones survive?
    accepted: list[tuple[str, float]] = []
    refused: list[int] = []
    stop = threading.Event()

    def submitter():
        while not stop.is_set():
            try:
                r = httpx.post(f"{c.base}/v1/colorizations", json={"image": c.upload(), "steps": 1, "sag_scale": 0},
                               headers=auth(ALICE), timeout=10)
            except httpx.HTTPError:
                refused.append(0)
                continue
            if r.status_code == 202:
                accepted.append((r.json()["id"], time.time()))
            else:
                refused.append(r.status_code)
                time.sleep(0.05)

    threads = [threading.Thread(target=submitter) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    killed_at = time.time()
    server.kill()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    server.start()
    wait_ready(c)

    last_second = [job_id for job_id, at in accepted if at > killed_at - 1.0]
    lost, outcomes = [], {}
    for job_id, at in accepted:
        r = httpx.get(f"{c.base}/v1/jobs/{job_id}", headers=auth(ALICE), timeout=10)
        if r.status_code == 404:
            lost.append((job_id, killed_at - at))
            continue
        outcomes[job_id] = c.wait_final(job_id, timeout=120)["status"]
    assert all(age < 1.0 for _, age in lost), f"lost jobs accepted over a second before the kill: {lost}"
    assert set(outcomes.values()) <= {"succeeded"}, outcomes  # whatever survived also finished
    assert_same_processes(c, api_pid, pid)
    # jobs created for submissions that were refused at the kill and left queued with no message
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(f"{c.base}/v1/jobs", params={"status": "queued", "limit": 100}, headers=auth(ALICE))
        orphans = [j["id"] for j in r.json()["items"]]
        if not orphans or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"\nSIGKILL: {len(accepted)} submissions accepted in the 2 s before the kill "
          f"({len(last_second)} in its last second), {len(lost)} of them lost; {len(refused)} refused "
          f"(503 or connection error) around the kill; {len(orphans)} jobs left queued with no message")
