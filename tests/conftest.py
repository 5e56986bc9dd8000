"""Shared fixtures. Redis tests use database 11 of the local server and clean it up."""
from __future__ import annotations

import os
import secrets
import socket

import pytest
import redis

# Most tests run an API without live workers (or submit before theirs report): off unless a test
# turns it on (tests/api/test_admission.py, tests/e2e). Subprocesses get it from clean_env.
os.environ.setdefault("VISIONJOBS_REFUSE_UNSERVED", "false")

# VISIONJOBS_TEST_REDIS_PORT: another local redis-server (parallel test runs on one machine)
TEST_REDIS_PORT = int(os.environ.get("VISIONJOBS_TEST_REDIS_PORT", "6379"))
TEST_REDIS_DB = int(os.environ.get("VISIONJOBS_TEST_REDIS_DB", "11"))
TEST_REDIS_URL = f"redis://127.0.0.1:{TEST_REDIS_PORT}/{TEST_REDIS_DB}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url():
    """A clean Redis database for one test (the real server on 127.0.0.1:6379 unless VISIONJOBS_TEST_REDIS_PORT says otherwise)."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.ping()  # no Redis is a failure, not a skip: CI has one
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        from service.store.sqlite_store import SqliteJobStore

        yield SqliteJobStore(tmp_path / "jobs.sqlite3")
        return
    from service.store.redis_store import RedisJobStore

    prefix = f"vjtest:{secrets.token_hex(4)}:"
    s = RedisJobStore(TEST_REDIS_URL, prefix=prefix)
    yield s
    for key in s.r.scan_iter(f"{prefix}*"):
        s.r.delete(key)
    s.close()
