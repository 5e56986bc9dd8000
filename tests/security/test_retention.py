"""Retention deletes bytes: after VISIONJOBS_RETENTION_S, no object of an expired job (its
outputs under jobs/<id>/, its upload) remains in the object store, local or S3, and the signed
URL it handed out answers 404; tuned artifacts unused for VISIONJOBS_ARTIFACT_IDLE_S go too,
resource and bytes. Run against both job stores (SQLite and Redis) and both object stores
(local files and a moto S3 server), with the API's own retention sweep running.

The worker is played by the test (claim, write outputs at the worker's keys, finish): what is
under test is what happens to bytes after a job ends, not how a model makes them.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.dispatch import LocalDispatcher
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes, until
from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, s3_server

RETENTION_S = 1
SWEEP = dict(retention_s=RETENTION_S, purge_interval_s=0.1, reaper_interval_s=0.1)


@pytest.fixture(scope="module")
def s3_port():
    with s3_server() as port:
        yield port


@pytest.fixture(params=["sqlite+local", "redis+s3"])
def app(request, tmp_path, s3_port):
    settings = dict(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, signing_secret="s" * 32)
    if request.param == "redis+s3":
        url = request.getfixturevalue("redis_url")
        settings.update(redis_url=url, s3_bucket=f"retention-{time.time_ns()}", s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
                        s3_public_endpoint_url=f"http://localhost:{s3_port}", s3_region=REGION,
                        s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY)
    return lambda **overrides: make_app(Settings(**{**settings, **SWEEP, **overrides}))


def make_app(settings: Settings):
    ctx = build_context(settings, dispatcher=LocalDispatcher())
    if settings.s3_bucket:
        ctx.objects.ensure_bucket()
    return ctx, TestClient(create_app(ctx, run_reaper=True))


def keys_under(ctx, prefix: str) -> list[str]:
    objects = ctx.objects
    if hasattr(objects, "root"):
        base = objects.root / prefix
        if base.is_file():
            return [prefix]
        return [str(p) for p in base.rglob("*") if p.is_file()] if base.exists() else []
    listed = objects._client.list_objects_v2(Bucket=objects.bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def fetch(client, url: str) -> int:
    parts = urlsplit(url)
    if parts.netloc == "testserver":
        return client.get(f"{parts.path}?{parts.query}").status_code
    return httpx.get(url).status_code


def upload(client) -> dict:
    r = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 48)), "image/png")}, headers=auth(ALICE))
    assert r.status_code == 201, r.text
    return r.json()


def run_job(ctx, client, image: str, status: str = "succeeded", outputs=("out.png", "thumb.png")) -> str:
    """Submit a colorization, then do what a worker does: claim, write outputs, finish."""
    job_id = client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE)).json()["id"]
    ctx.store.claim(job_id, "test-worker", 30)
    keys = []
    for name in outputs:
        keys.append(f"jobs/{job_id}/{name}")
        ctx.objects.put(keys[-1], png_bytes(photo(32, 24)), "image/png")
    result = {"images": [{"key": k} for k in keys]} if status == "succeeded" else None
    error = None if status == "succeeded" else {"code": "internal_error", "message": "failed after writing"}
    ctx.store.finish(job_id, 1, status, result=result, error=error)
    return job_id


def upload_key(ctx, upload_id: str) -> str:
    return ctx.store.get_upload(upload_id).key


def test_after_expiry_no_object_of_the_job_remains_and_its_url_answers_404(app):
    ctx, client = app()
    with client:
        image = upload(client)["id"]
        key = upload_key(ctx, image)
        job_id = run_job(ctx, client, image)
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json()
        urls = [item["url"] for item in job["result"]["images"]]
        assert keys_under(ctx, key)
        assert [fetch(client, u) for u in urls] == [200, 200]
        assert len(keys_under(ctx, f"jobs/{job_id}/")) >= 2
        until(lambda: not keys_under(ctx, f"jobs/{job_id}/") and not keys_under(ctx, key), what="expired bytes deleted")
        assert [fetch(client, u) for u in urls] == [404, 404]  # the URL was still within its own lifetime
        assert client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).status_code == 404


def test_a_failed_job_loses_the_outputs_it_wrote(app):
    ctx, client = app()
    with client:
        image = upload(client)["id"]
        job_id = run_job(ctx, client, image, status="failed", outputs=("partial.png",))
        assert keys_under(ctx, f"jobs/{job_id}/")
        until(lambda: not keys_under(ctx, f"jobs/{job_id}/"), what="a failed job's outputs deleted")


def test_a_job_whose_worker_vanished_loses_its_outputs_once_it_fails(app):
    ctx, client = app(max_attempts=1)
    with client:
        image = upload(client)["id"]
        job_id = client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE)).json()["id"]
        ctx.store.claim(job_id, "vanishing-worker", 0.05)
        ctx.objects.put(f"jobs/{job_id}/partial.png", b"x", "image/png")
        until(lambda: ctx.store.get_job(job_id) is None or ctx.store.get_job(job_id).status == "failed",
              what="the reaper failed the job")
        until(lambda: not keys_under(ctx, f"jobs/{job_id}/"), what="a lost job's outputs deleted")


def test_an_expired_upload_is_gone_from_the_object_store(app):
    ctx, client = app()
    with client:
        image = upload(client)["id"]
        key = upload_key(ctx, image)
        assert keys_under(ctx, key)
        until(lambda: not keys_under(ctx, key), what="the expired upload deleted")
        r = client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image"


def test_a_live_job_keeps_its_outputs(app):
    ctx, client = app(retention_s=3600)
    with client:
        job_id = run_job(ctx, client, upload(client)["id"])
        time.sleep(0.5)  # several sweeps
        assert len(keys_under(ctx, f"jobs/{job_id}/")) == 2


def _artifact(ctx, model_id: str) -> str:
    prefix = f"anomaly/alice/{model_id}/"
    ctx.objects.put(prefix + "memory.safetensors", b"weights", "application/octet-stream")
    ctx.store.put_resource("anomaly_model", model_id, "alice", {"name": "m", "prefix": prefix, "files": []})
    return prefix


def test_an_unused_tuned_artifact_is_deleted_resource_and_bytes(app):
    ctx, client = app(artifact_idle_s=1)
    with client:
        prefix = _artifact(ctx, "anm_" + "1" * 24)
        until(lambda: ctx.store.get_resource("anomaly_model", "anm_" + "1" * 24) is None and not keys_under(ctx, prefix),
              what="the idle artifact deleted")
        assert client.get("/v1/anomaly-models", headers=auth(ALICE)).json()["items"] == []


def test_an_artifact_in_use_is_kept(app):
    ctx, client = app(artifact_idle_s=2)
    with client:
        model_id = "anm_" + "2" * 24
        prefix = _artifact(ctx, model_id)
        for _ in range(6):  # a job uses it every half second
            time.sleep(0.5)
            ctx.store.touch_resource("anomaly_model", model_id)
        assert ctx.store.get_resource("anomaly_model", model_id) is not None and keys_under(ctx, prefix)
