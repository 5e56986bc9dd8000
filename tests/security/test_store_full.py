"""Store-full is an outage, not a bug: with Redis at `maxmemory` under `noeviction` (compose's
policy) every write the API needs is refused, and the API answers 503 problem+json with
Retry-After (`store_full`), never 500; /readyz says not ready (it writes, not only pings) and
names no host or port; reads keep working; once memory is freed the same requests succeed.
The Redis is a private redis-server with a tiny maxmemory, filled by the test. The embedded
store (SQLite) answers a full or read-only file the same way.
"""
from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.dispatch import LocalDispatcher
from tests.conftest import free_port
from tests.helpers import ALICE, BOB, KEYS, auth, photo, png_bytes

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def tiny_redis(tmp_path_factory):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--maxmemory", "4mb", "--maxmemory-policy", "noeviction",
                             "--dir", str(tmp_path_factory.mktemp("redis-full"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield port, client
    proc.terminate()
    proc.wait(10)


def fill(client: redis.Redis) -> None:
    """Write filler until Redis refuses, then lower maxmemory below what is used: freed client
    buffers cannot make room again, every write is refused until memory is freed."""
    for i in range(100_000):
        try:
            client.set(f"filler:{i}", b"x" * 20_000)
        except redis.exceptions.OutOfMemoryError:
            client.config_set("maxmemory", client.info("memory")["used_memory"] // 2)
            return
    raise AssertionError("redis never filled up")


def free(client: redis.Redis) -> None:
    client.config_set("maxmemory", "4mb")
    for key in client.scan_iter("filler:*", count=1000):
        client.delete(key)


@pytest.fixture(scope="module")
def api(tiny_redis, tmp_path_factory):
    port, raw = tiny_redis
    settings = Settings(data_dir=tmp_path_factory.mktemp("full-api"), api_keys=KEYS, redis_url=f"redis://127.0.0.1:{port}/0",
                        s3_bucket=None, signing_secret="s" * 32, rate_limit_per_minute=100_000)
    ctx = build_context(settings, dispatcher=LocalDispatcher())
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 48)), "image/png")},
                            headers=auth(ALICE)).json()["id"]
        job = client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE)).json()["id"]
        model = "anm_" + "1" * 24
        ctx.store.put_resource("anomaly_model", model, "alice", {"name": "m", "thresholds": {"image": 1.0, "pixel": 1.0},
                                                                  "prefix": "anomaly/alice/m/", "files": []})
        bob_image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 48)), "image/png")},
                                headers=auth(BOB)).json()["id"]
        fill(raw)
        client.seeds = {"image": image, "job": job, "model": model, "bob_image": bob_image}
        yield client, raw
        free(raw)


def assert_full(r):
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"] == PROBLEM and int(r.headers["retry-after"]) > 0
    assert r.json()["code"] in ("store_full", "not_ready")


def test_a_submission_at_maxmemory_is_503_store_full(api):
    client, _ = api
    r = client.post("/v1/colorizations", json={"image": client.seeds["image"]}, headers=auth(ALICE))
    assert_full(r)
    assert r.json()["code"] == "store_full"


def test_an_upload_at_maxmemory_is_503(api):
    client, _ = api
    assert_full(client.post("/v1/uploads", files={"file": ("b.png", png_bytes(photo(48, 48)), "image/png")},
                            headers=auth(ALICE)))


def test_a_cancel_at_maxmemory_is_503(api):
    client, _ = api
    assert_full(client.post(f"/v1/jobs/{client.seeds['job']}/cancel", headers=auth(ALICE)))


def test_a_patch_at_maxmemory_is_503(api):
    client, _ = api
    assert_full(client.patch(f"/v1/anomaly-models/{client.seeds['model']}", json={"image_threshold": 2.0},
                             headers=auth(ALICE)))


def test_readyz_at_maxmemory_is_not_ready_and_names_no_host(api):
    client, _ = api
    r = client.get("/readyz")
    assert_full(r)
    assert "127.0.0.1" not in r.text and "6379" not in r.text and "maxmemory" not in r.text


def test_reads_still_work_at_maxmemory(api):
    client, _ = api
    assert client.get(f"/v1/jobs/{client.seeds['job']}", headers=auth(ALICE)).status_code == 200
    assert client.get("/v1/jobs", headers=auth(ALICE)).status_code == 200


def test_a_new_rate_window_at_maxmemory_still_serves_reads(api):
    """Its rate counter cannot be written either: counted in-process, so the request reaches the route."""
    client, _ = api
    client.app.state.ctx.limiter._buckets.clear()  # a new window: every key must lease tokens again
    assert client.get("/v1/jobs", headers=auth(BOB)).status_code == 200
    assert_full(client.post("/v1/colorizations", json={"image": client.seeds["bob_image"]}, headers=auth(BOB)))


def test_once_memory_is_freed_the_same_requests_succeed(api):
    client, raw = api
    free(raw)
    try:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/colorizations", json={"image": client.seeds["image"]},
                           headers=auth(ALICE)).status_code == 202
    finally:
        fill(raw)


# --- the embedded store -----------------------------------------------------------------

def test_a_full_sqlite_file_is_503_store_full(tmp_path):
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 48)), "image/png")},
                            headers=auth(ALICE)).json()["id"]
        db = sqlite3.connect(ctx.store.path)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.close()

        def cap(conn):  # this file may not grow any more: the next insert is SQLITE_FULL
            conn.execute(f"PRAGMA max_page_count={pages}")

        original = ctx.store._db

        def capped():
            conn = original()
            cap(conn)
            return conn

        ctx.store._db = capped
        r = None
        for _ in range(200):  # fill what room is left in the last pages
            r = client.post("/v1/colorizations", json={"image": image, "prompt": "x" * 900}, headers=auth(ALICE))
            if r.status_code != 202:
                break
        assert_full(r)
        assert client.get("/readyz").status_code == 503
