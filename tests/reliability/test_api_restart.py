"""API restart while clients wait: long-polls (GET ?wait=30) and SSE streams get a clean close
when the API is stopped (an HTTP response; a stream that ends properly), the API exits at once
instead of waiting for the jobs they follow, and after the restart no job state is lost: the
running job finishes on its first attempt, its stream resumes from Last-Event-ID, and a queued
job is exactly as it was."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.helpers import ALICE, auth, parse_sse

pytestmark = pytest.mark.integration
# What an orchestrator grants a stopping container before SIGKILL is 10 s (docker's default);
# the API must be well within it even when the jobs its clients wait on run for hours.
SHUTDOWN_BUDGET_S = 5.0


class LongPoll(threading.Thread):
    def __init__(self, base: str, job_id: str):
        super().__init__(daemon=True)
        self.url, self.outcome, self.ended = f"{base}/v1/jobs/{job_id}", None, None

    def run(self):
        try:
            r = httpx.get(self.url, params={"wait": 30}, headers=auth(ALICE), timeout=60)
            self.outcome = r
        except httpx.HTTPError as exc:
            self.outcome = exc
        self.ended = time.time()


class Stream(threading.Thread):
    def __init__(self, base: str, job_id: str, last_event_id: str | None = None):
        super().__init__(daemon=True)
        self.url = f"{base}/v1/jobs/{job_id}/events"
        self.headers = {**auth(ALICE), **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        self.text, self.error, self.ended = "", None, None
        self.first_frame = threading.Event()

    def run(self):
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=60)) as r:
                assert r.status_code == 200
                for chunk in r.iter_text():
                    self.text += chunk
                    if "\n\n" in self.text:
                        self.first_frame.set()
        except Exception as exc:  # a cut stream: httpx.RemoteProtocolError (incomplete chunked read)
            self.error = exc
        self.ended = time.time()
        self.first_frame.set()

    def jobs(self) -> list[tuple[int, dict]]:
        import json

        return [(int(e["id"]), json.loads(e["data"])) for e in parse_sse(self.text) if e.get("event") == "job"]


def test_api_restart_closes_waiting_clients_cleanly_and_loses_no_job_state(cluster):
    # one job running through the restart, one that cannot end by itself: no worker of this
    # cluster serves the video.generate queue, so its long-poll and stream wait until told to stop
    running = cluster.submit(size=128, steps=100, seed=3)["id"]
    r = httpx.post(f"{cluster.base}/v1/video-generations", headers=auth(ALICE), timeout=30,
                   json={"prompts": ["a red ball"], "steps": 1, "width": 64, "height": 64})
    assert r.status_code == 202, r.text
    parked = r.json()["id"]
    cluster.wait_status(running, lambda j: j["status"] == "running" and j["progress"] >= 0.1, timeout=60)
    polls = [LongPoll(cluster.base, job_id) for job_id in (running, parked)]
    streams = [Stream(cluster.base, job_id) for job_id in (running, parked)]
    for t in polls + streams:
        t.start()
    for s in streams:
        assert s.first_frame.wait(10) and s.error is None, s.error
    time.sleep(0.5)  # the long-polls are parked in the store's wait

    api = cluster.api
    stopped_at = time.time()
    api.p.send_signal(signal.SIGTERM)
    try:
        api.p.wait(timeout=20)
        exited_after = time.time() - stopped_at
    except subprocess.TimeoutExpired:
        exited_after = None  # still waiting for its clients: cut them (what an orchestrator's SIGKILL does)
        api.stop(signal.SIGKILL)
    for t in polls + streams:
        t.join(timeout=5)
    statuses = {job_id: cluster.status_in_store(job_id) for job_id in (running, parked)}  # the API is down
    cluster.start_api()  # before any assertion: the later tests need it

    assert exited_after is not None and exited_after < SHUTDOWN_BUDGET_S, (
        f"the API took {'over 20' if exited_after is None else f'{exited_after:.1f}'} s to stop on SIGTERM: "
        "it waits for its open long-polls and SSE streams")
    # every client was answered, and none outlived the server's own shutdown
    for t in polls + streams:
        assert t.ended is not None and t.ended <= stopped_at + exited_after + 1.0, (t, exited_after)
    for p in polls:
        assert isinstance(p.outcome, httpx.Response), f"long-poll cut without a response: {p.outcome!r}"
        assert p.outcome.status_code in (200, 503), p.outcome.text
    for s in streams:
        assert s.error is None, f"SSE stream cut instead of ended: {s.error!r}"
        assert s.jobs(), s.text
    assert statuses[running] in ("running", "succeeded") and statuses[parked] == "queued", statuses

    # after the restart: the running job went on and finished on its first attempt, its stream
    # resumes after the last event the client had; the parked job is exactly as it was
    last_id, _ = streams[0].jobs()[-1]
    resumed = Stream(cluster.base, running, last_event_id=str(last_id))
    resumed.run()
    assert resumed.error is None, resumed.error
    frames = resumed.jobs()
    assert frames and frames[0][0] > last_id
    assert frames[-1][1]["status"] == "succeeded", frames[-1]
    final = cluster.get(running)
    assert final["status"] == "succeeded" and final["attempt"] == 1, final
    assert len(cluster.starts()[running]) == 1  # the restart cost the job nothing: never re-run
    last_id, seen = streams[1].jobs()[-1]
    now = cluster.get(parked)
    assert now["status"] == "queued" and now["created_at"] == seen["created_at"]
    assert int(cluster.events(parked)[-1]["version"]) == last_id  # nothing happened to it meanwhile
    r = httpx.post(f"{cluster.base}/v1/jobs/{parked}/cancel", headers=auth(ALICE), timeout=10)
    assert r.json()["status"] == "canceled"
    print(f"\napi restart: SIGTERM to exit {exited_after:.2f} s with 2 long-polls and 2 SSE streams open; "
          f"long-polls answered {[p.outcome.status_code for p in polls]}")
