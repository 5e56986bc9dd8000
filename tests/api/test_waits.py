"""Long-polls and event streams under a real server: the per-key cap, hang-ups that free what a
wait held, no thread per waiter, and blocking storage calls off the event loop."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest

from service.app import build_context, create_app
from service.core.config import Settings
from service.storage.local import LocalObjectStore
from service.store import sqlite_async
from service.store.base import JobRecord, new_id
from tests.helpers import ALICE, BOB, KEYS, LiveServer, auth, photo, png_bytes, until


def make_server(tmp_path, **overrides):
    settings = Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, **overrides)
    ctx = build_context(settings)
    server = LiveServer(create_app(ctx, run_reaper=False))
    server.ctx = ctx
    return server


def queued_job(ctx, tenant: str) -> str:
    """A job no worker will run (none here): its waits only end by time, hang-up or stop."""
    job = JobRecord(id=new_id("job"), tenant=tenant, kind="colorize", params={"seed": 1})
    ctx.store.create_job(job)
    return job.id


def open_wait(server, path: str, key: str) -> socket.socket:
    """A raw HTTP/1.1 request left waiting (closing the socket is the client hanging up)."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    return s


def test_waiters_per_key_are_capped_with_a_429_naming_the_cap(tmp_path):
    with make_server(tmp_path, max_waiters_per_key=3) as server:
        ctx, base = server.ctx, server.base
        job, bobs = queued_job(ctx, "alice"), queued_job(ctx, "bob")
        socks = [open_wait(server, f"/v1/jobs/{job}?wait=30", ALICE) for _ in range(2)]
        socks.append(open_wait(server, f"/v1/jobs/{job}/events", ALICE))
        until(lambda: ctx.hub.count("alice") == 3, what="three waits registered")
        for path in (f"/v1/jobs/{job}?wait=30", f"/v1/jobs/{job}/events"):
            r = httpx.get(base + path, headers=auth(ALICE), timeout=10)
            assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json", r.text
            problem = r.json()
            assert problem["code"] == "too_many_waiters" and problem["errors"][0]["limit"] == 3
            assert "3 open long-polls" in problem["detail"] and "VISIONJOBS_MAX_WAITERS_PER_KEY" in problem["detail"]
            assert r.headers["retry-after"]
        # reads without `wait` are not waits; another key has its own budget
        assert httpx.get(f"{base}/v1/jobs/{job}", headers=auth(ALICE), timeout=10).status_code == 200
        r = httpx.get(f"{base}/v1/jobs/{bobs}", params={"wait": 0.2}, headers=auth(BOB), timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "queued"
        # a hang-up gives the slot back
        socks.pop().close()
        until(lambda: ctx.hub.count("alice") == 2, what="the closed stream's slot released")
        r = httpx.get(f"{base}/v1/jobs/{job}", params={"wait": 0.2}, headers=auth(ALICE), timeout=10)
        assert r.status_code == 200
        for s in socks:
            s.close()


def test_clients_hanging_up_end_their_waits_and_hold_no_thread(tmp_path):
    n = 24
    with make_server(tmp_path, max_waiters_per_key=100) as server:
        ctx, base = server.ctx, server.base
        job = queued_job(ctx, "alice")

        def read():
            httpx.get(f"{base}/v1/jobs/{job}", headers=auth(ALICE), timeout=10).raise_for_status()

        warm = [threading.Thread(target=read) for _ in range(16)]  # the store's executor at full size
        [t.start() for t in warm]
        [t.join() for t in warm]
        threads_before = threading.active_count()
        polls = [open_wait(server, f"/v1/jobs/{job}?wait=60", ALICE) for _ in range(n)]
        streams = [open_wait(server, f"/v1/jobs/{job}/events", ALICE) for _ in range(n)]
        until(lambda: ctx.hub.count("alice") == 2 * n, what=f"{2 * n} waits registered")
        for s in streams:  # each stream has sent its first frame
            assert b"event: job" in s.recv(65536)
        # at most the store's fixed executor may still be growing to its size: never one per waiter
        assert threading.active_count() <= threads_before + sqlite_async.THREADS < threads_before + 2 * n, \
            "a thread per waiter"
        for s in polls + streams:
            s.close()
        until(lambda: ctx.hub.count() == 0 and ctx.hub.jobs_watched() == 0, what="every wait ended after hang-up")
        # and the server is as it was: a new wait is woken by a change at once
        done = {}

        def poll():
            done["r"] = httpx.get(f"{base}/v1/jobs/{job}", params={"wait": 30}, headers=auth(ALICE), timeout=40)

        t = threading.Thread(target=poll)
        t.start()
        until(lambda: ctx.hub.count() == 1, what="the new wait registered")
        ctx.store.request_cancel(job)  # the embedded worker's store notifies the hub in-process
        t.join(timeout=20)
        assert done["r"].json()["status"] == "canceled"


class StallingStore(LocalObjectStore):
    """An object store whose uploads hang until released: an S3 endpoint that stopped answering."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered, self.release = threading.Event(), threading.Event()

    def put(self, key, data, content_type):
        if key.startswith("uploads/"):
            self.entered.set()
            self.release.wait(60)
        super().put(key, data, content_type)


def test_a_stalled_object_store_does_not_delay_other_requests(tmp_path):
    server = make_server(tmp_path)
    ctx = server.ctx
    ctx.objects = StallingStore(tmp_path / "objects", b"secret-for-the-test")
    with server:
        bobs = queued_job(ctx, "bob")
        upload = {}

        def post():
            upload["r"] = httpx.post(f"{server.base}/v1/uploads", headers=auth(ALICE), timeout=60,
                                     files={"file": ("a.png", png_bytes(photo(32, 32)), "image/png")})

        t = threading.Thread(target=post)
        t.start()
        try:
            assert ctx.objects.entered.wait(20), "the upload never reached the object store"
            # the upload's storage call is stuck; the loop must still serve everyone else
            assert httpx.get(f"{server.base}/healthz", timeout=5).json() == {"status": "ok"}
            r = httpx.get(f"{server.base}/v1/jobs/{bobs}", headers=auth(BOB), timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "queued"
        finally:
            ctx.objects.release.set()
            t.join(timeout=30)
        assert upload["r"].status_code == 201, upload["r"].text


@pytest.mark.parametrize("path", ["/v1/jobs/job_000000000000000000000000", "/v1/jobs"])
def test_healthz_needs_no_store_while_everything_else_answers_503(tmp_path, path):
    from tests.conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=dead, s3_bucket=None,
                        signing_secret="s" * 32)
    from fastapi.testclient import TestClient

    with TestClient(create_app(build_context(settings), run_reaper=False)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 503
        r = client.get(path, headers=auth(ALICE))
        assert r.status_code == 503 and r.json()["code"] == "store_unavailable"
