"""Per-key rate limit, concurrent-job quota and body size limits."""
from __future__ import annotations

import asyncio
import json
import random

import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.limits import RateLimiter
from tests.helpers import ALICE, BOB, KEYS, auth, photo, png_bytes


def make_client(tmp_path, **overrides) -> TestClient:
    settings = Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, **overrides)
    return TestClient(create_app(build_context(settings), run_reaper=False))


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path):
    with make_client(tmp_path, rate_limit_per_minute=5) as client:
        codes = [client.get("/v1/jobs", headers=auth(ALICE)).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        r = client.get("/v1/jobs", headers=auth(ALICE))
        assert r.headers["content-type"] == "application/problem+json" and r.json()["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert client.get("/v1/jobs", headers=auth(BOB)).status_code == 200  # per key


def test_redis_rate_limit_holds_across_api_processes_to_its_documented_accuracy(redis_url):
    """Three limiters on one Redis are three API processes: together they never admit more than
    the limit per window, refuse early at most (processes - 1) x chunk, and go to Redis once per
    chunk of requests, not once per request."""
    limit, chunk, processes = 200, 7, 3

    async def scenario():
        clients = [aioredis.Redis.from_url(redis_url) for _ in range(processes)]
        limiters = [RateLimiter(limit, c, prefix="vjtest:", chunk=chunk, clock=lambda: 6_000_030.0) for c in clients]
        rng = random.Random(7)
        admitted = 0
        for _ in range(3 * limit):
            admitted += await limiters[rng.randrange(processes)].hit("t") is None
        other = await limiters[0].hit("other")
        leases = sum(lim.leases for lim in limiters)
        for c in clients:
            await c.aclose()
        return admitted, other, leases

    admitted, other, leases = asyncio.run(scenario())
    print(f"admitted {admitted} of {3 * limit} (limit {limit}), {leases} round trips to Redis")
    assert limit - (processes - 1) * chunk <= admitted <= limit
    assert other is None  # per key
    assert leases <= limit // chunk + 2 * processes + 1  # round trips per chunk, plus each one's last refusal


def test_redis_rate_limit_refuses_with_the_time_left_in_the_window(redis_url):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        limiter = RateLimiter(2, client, prefix="vjtest:", clock=lambda: 6_000_050.0)
        answers = [await limiter.hit("t") for _ in range(3)]
        await client.aclose()
        return answers

    assert asyncio.run(scenario()) == [None, None, 10.0]


def test_concurrent_job_quota(tmp_path):
    with make_client(tmp_path, max_active_jobs=2) as client:
        image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo()), "image/png")},
                            headers=auth(ALICE)).json()["id"]
        first, second = (client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE)) for _ in range(2))
        assert first.status_code == second.status_code == 202
        third = client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE))
        assert third.status_code == 429 and third.json()["code"] == "quota_exceeded" and third.headers["retry-after"]
        client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth(ALICE))
        assert client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE)).status_code == 202


def test_json_body_over_the_limit_is_413_before_parsing(tmp_path):
    with make_client(tmp_path, max_body_bytes=10_000) as client:
        body = json.dumps({"image": "upl_" + "0" * 24, "prompt": "x" * 20_000})
        r = client.post("/v1/colorizations", content=body, headers={**auth(ALICE), "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["errors"][0] == {"field": "body", "message": "too large", "limit": 10_000}


def test_chunked_upload_over_the_limit_is_cut_off(tmp_path):
    with make_client(tmp_path, max_upload_bytes=100_000) as client:
        boundary = "b0undary"

        def chunks():  # no Content-Length: the size is only known by counting
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
                   "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"
            for _ in range(40):
                yield b"\0" * 10_000
            yield f"\r\n--{boundary}--\r\n".encode()

        r = client.post("/v1/uploads", content=chunks(),
                        headers={**auth(ALICE), "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and r.json()["errors"][0]["field"] == "file"
        assert r.json()["errors"][0]["limit"] == 100_000


def test_zero_disables_the_rate_limit(tmp_path):
    with make_client(tmp_path, rate_limit_per_minute=0) as client:
        assert all(client.get("/v1/jobs", headers=auth(ALICE)).status_code == 200 for _ in range(20))
