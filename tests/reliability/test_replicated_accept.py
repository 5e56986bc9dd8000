"""A submission answers 202 only once its job is on a replica (Redis WAIT), when the primary has
one: a private primary + replica pair; the replica frozen (SIGSTOP, still "connected" to the
primary) makes the submission answer 503 + Retry-After and withdraw the job (canceled, its
Idempotency-Key free again). A lone primary is never waited on."""
from __future__ import annotations

import os
import signal

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes
from tests.redis_servers import Server

SECRET = "replicated-accept-signing-secret-0123456789"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicated")
    primary = Server(tmp, "primary", ["appendonly yes", "appendfsync everysec", 'save ""'])
    replica = Server(tmp, "replica", ['save ""', f"replicaof 127.0.0.1 {primary.port}"])
    try:
        until_synced(replica)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def until_synced(replica, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while replica.client().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never synced"
        time.sleep(0.05)


def api(url: str, tmp_path, **over):
    settings = Settings(redis_url=url, api_keys=KEYS, data_dir=tmp_path, signing_secret=SECRET, **over)
    return TestClient(create_app(build_context(settings), run_reaper=False))


def submit(c: TestClient, upload: str, key: str | None = None):
    headers = {**auth(ALICE), **({"Idempotency-Key": key} if key else {})}
    return c.post("/v1/colorizations", json={"image": upload, "steps": 1, "sag_scale": 0}, headers=headers)


def upload(c: TestClient) -> str:
    r = c.post("/v1/uploads", files={"file": ("p.png", png_bytes(photo(64, 64)), "image/png")}, headers=auth(ALICE))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_submission_is_accepted_only_on_a_replica(pair, tmp_path):
    primary, replica = pair
    with api(f"redis://127.0.0.1:{primary.port}/0", tmp_path, redis_wait_timeout_ms=300) as c:
        image = upload(c)
        r = submit(c, image)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        # at the 202 the job and its broker message are on the replica already: WAIT answered 1
        assert replica.client().hget(f"vj:job:{job_id}", "status") == "queued"
        assert replica.client().llen("colorize") == 1

        os.kill(replica.proc.pid, signal.SIGSTOP)  # still connected, acknowledges nothing
        try:
            r = submit(c, image, key="once")
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "not_replicated" and int(r.headers["retry-after"]) >= 1
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        statuses = {k: primary.client().hget(k, "status") for k in primary.client().scan_iter("vj:job:*")}
        assert sorted(statuses.values()) == ["canceled", "queued"], statuses  # withdrawn, never run
        assert list(primary.client().scan_iter("vj:idem:*")) == []  # the key is free for the retry

        until_synced(replica)
        r = submit(c, image, key="once")  # the client's retry: a new job, accepted
        assert r.status_code == 202, r.text
        assert replica.client().hget(f"vj:job:{r.json()['id']}", "status") == "queued"


def test_a_lone_primary_is_never_waited_on(redis_url, tmp_path):
    admin = redis.Redis.from_url(redis_url)
    assert admin.info("replication")["connected_slaves"] == 0
    with api(redis_url, tmp_path) as c:
        image = upload(c)
        admin.config_resetstat()
        assert submit(c, image).status_code == 202
    assert "cmdstat_wait" not in admin.info("commandstats")
