"""Distributed mode with real processes: `visionjobs api` + two `visionjobs worker` launchers,
the local Redis (database 11), and a local S3-compatible server."""
from __future__ import annotations

import io
import os
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import TEST_REDIS_URL, free_port
from tests.helpers import ALICE, KEYS, auth, l_channel, photo, png_bytes
from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_for_log, wait_http
from tests.s3server import ACCESS_KEY, SECRET_KEY, s3_server

pytestmark = pytest.mark.integration
LEASE_S = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import redis

    tmp = tmp_path_factory.mktemp("cluster")
    r = redis.Redis.from_url(TEST_REDIS_URL)
    r.flushdb()
    with s3_server() as s3:
        from service.storage.s3 import S3ObjectStore

        S3ObjectStore("vj-int", endpoint_url=f"http://127.0.0.1:{s3}", public_endpoint_url=None, region="us-east-1",
                      access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY).ensure_bucket()
        port = free_port()
        env = clean_env(
            VISIONJOBS_REDIS_URL=TEST_REDIS_URL, VISIONJOBS_API_KEYS=KEYS, VISIONJOBS_DATA_DIR=str(tmp),
            VISIONJOBS_S3_BUCKET="vj-int", VISIONJOBS_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3}",
            VISIONJOBS_S3_PUBLIC_ENDPOINT_URL=f"http://localhost:{s3}", VISIONJOBS_S3_ACCESS_KEY_ID=ACCESS_KEY,
            VISIONJOBS_S3_SECRET_ACCESS_KEY=SECRET_KEY, VISIONJOBS_MODEL_PROFILE="tiny",
            VISIONJOBS_LEASE_S=str(LEASE_S), VISIONJOBS_REAPER_INTERVAL_S="0.5",
            VISIONJOBS_PROGRESS_INTERVAL_S="0.1")
        api = Proc([*VISIONJOBS, "api", "--port", str(port)], env, tmp / "api.log")
        workers = [Proc([*VISIONJOBS, "worker", "--queues", "colorize", "--preload"], env, tmp / f"worker{i}.log")
                   for i in range(2)]
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", api)
            for w in workers:
                wait_for_log(w, "ready.")
            yield {"base": f"http://127.0.0.1:{port}", "api": api, "workers": workers, "s3": s3}
        finally:
            for p in [api, *workers]:
                p.stop()
            r.flushdb()


def submit(base: str, upload_id: str, **params) -> dict:
    r = httpx.post(f"{base}/v1/colorizations", json={"image": upload_id, **params}, headers=auth(ALICE), timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def wait_final(base: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", params={"wait": 20}, headers=auth(ALICE), timeout=30).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(job_id)


def wait_running(base: str, job_id: str, min_progress: float = 0.1, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE)).json()
        if job["status"] == "running" and job["progress"] >= min_progress:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise TimeoutError(job_id)


@pytest.fixture(scope="module")
def upload_id(cluster):
    files = {"file": ("p.png", png_bytes(photo(80, 64)), "image/png")}
    return httpx.post(f"{cluster['base']}/v1/uploads", files=files, headers=auth(ALICE)).json()["id"]


def started_counts(cluster) -> Counter:
    pattern = re.compile(r"job (job_[0-9a-f]{24}) \(colorize\) attempt (\d+) started")
    return Counter(m.group(1) for w in cluster["workers"] for m in pattern.finditer(w.log()))


def test_twenty_concurrent_jobs_each_run_exactly_once(cluster, upload_id):
    base = cluster["base"]
    with ThreadPoolExecutor(20) as pool:
        jobs = list(pool.map(lambda i: submit(base, upload_id, steps=2, seed=i), range(20)))
        finals = list(pool.map(lambda j: wait_final(base, j["id"]), jobs))
    assert [f["status"] for f in finals] == ["succeeded"] * 20, [f["error"] for f in finals]
    assert all(f["attempt"] == 1 and f["model_profile"] == "tiny" for f in finals)
    counts = started_counts(cluster)
    assert all(counts[j["id"]] == 1 for j in jobs), counts
    # presigned URLs (signed for the public host name) download with a plain HTTP client
    for final in finals[:5]:
        image = final["result"]["images"][0]
        assert image["url"].startswith("http://localhost:")
        r = httpx.get(image["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (80, 64)
        assert np.abs(l_channel(out) - l_channel(photo(80, 64))).mean() <= 2.0


def test_cancel_queued_and_running(cluster, upload_id):
    base = cluster["base"]
    long_jobs = [submit(base, upload_id, steps=100) for _ in range(2)]  # occupy both workers
    queued = submit(base, upload_id, steps=2)
    running = wait_running(base, long_jobs[0]["id"], min_progress=0.1)
    r = httpx.post(f"{base}/v1/jobs/{queued['id']}/cancel", headers=auth(ALICE))
    assert r.json()["status"] == "canceled"
    httpx.post(f"{base}/v1/jobs/{running['id']}/cancel", headers=auth(ALICE))
    httpx.post(f"{base}/v1/jobs/{long_jobs[1]['id']}/cancel", headers=auth(ALICE))
    final = wait_final(base, running["id"], timeout=30)
    assert final["status"] == "canceled" and final["progress"] < 0.9
    assert wait_final(base, long_jobs[1]["id"], timeout=30)["status"] == "canceled"
    time.sleep(1.0)
    never = httpx.get(f"{base}/v1/jobs/{queued['id']}", headers=auth(ALICE)).json()
    assert never["status"] == "canceled" and never["attempt"] == 0 and never["started_at"] is None
    assert started_counts(cluster)[queued["id"]] == 0


def test_sigkilled_worker_job_is_requeued_and_succeeds_on_attempt_two(cluster, upload_id):
    base = cluster["base"]
    job = submit(base, upload_id, steps=40, num_outputs=2)
    running = wait_running(base, job["id"], min_progress=0.2)
    os.kill(_worker_pid(job["id"]), signal.SIGKILL)
    final = wait_final(base, job["id"], timeout=120)
    assert final["status"] == "succeeded" and final["attempt"] == 2, final
    assert started_counts(cluster)[job["id"]] == 2
    urls = [img["url"] for img in final["result"]["images"]]
    assert len(urls) == 2 and all(httpx.get(u).status_code == 200 for u in urls)
    assert running["attempt"] == 1
    # fixed output keys: the re-run overwrote, nothing is duplicated
    assert sorted(_object_keys(cluster, f"jobs/{job['id']}/")) == [f"jobs/{job['id']}/output_{i}.png" for i in (0, 1)]


def _worker_pid(job_id: str) -> int:
    import redis

    worker = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True).hget(f"vj:job:{job_id}", "worker")
    return int(worker.rsplit(":", 1)[1])


def _object_keys(cluster, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{cluster['s3']}", region_name="us-east-1",
                      aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    return [o["Key"] for o in s3.list_objects_v2(Bucket="vj-int", Prefix=prefix).get("Contents", [])]
