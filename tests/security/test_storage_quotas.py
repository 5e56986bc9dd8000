"""Per-tenant quotas on stored bytes: uploads (VISIONJOBS_MAX_TENANT_UPLOAD_BYTES) and job
parameters (VISIONJOBS_MAX_TENANT_PARAMS_BYTES), counted until retention ends, so a submit +
cancel loop or a stream of uploads cannot pin unbounded store memory. Over a quota: 429
problem+json `storage_quota_exceeded` naming the quota, its setting, the bytes used and the
limit, with Retry-After; an item larger than the whole quota: 413. Both job stores.
"""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.dispatch import LocalDispatcher
from tests.helpers import ALICE, BOB, KEYS, auth, photo, png_bytes

PROBLEM = "application/problem+json"
PROMPT = "p" * 900  # about 2 KB of params per colorization with the defaults filled in


@pytest.fixture(params=["sqlite", "redis"])
def make(request, tmp_path):
    def build(dispatcher=None, **overrides):
        settings = dict(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, signing_secret="s" * 32)
        if request.param == "redis":
            settings["redis_url"] = request.getfixturevalue("redis_url")
        ctx = build_context(Settings(**{**settings, **overrides}), dispatcher=dispatcher or LocalDispatcher())
        return ctx, TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False)
    return build


def upload(client, key=ALICE, size=(64, 48)):
    return client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(*size)), "image/png")}, headers=auth(key))


def assert_quota(r, status: int, quota: str, setting: str):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["code"] == "storage_quota_exceeded"
    error = r.json()["errors"][0]
    assert error["quota"] == quota and error["setting"] == setting and error["limit"] > 0
    if status == 429:
        assert int(r.headers["retry-after"]) >= 1 and error["used"] + max(error["requested"], 1) > error["limit"]


def test_uploads_past_the_quota_are_429_naming_it(make):
    size = len(png_bytes(photo(64, 48)))
    _, client = make(max_tenant_upload_bytes=3 * size)
    with client:
        assert [upload(client).status_code for _ in range(3)] == [201, 201, 201]
        assert_quota(upload(client), 429, "uploads", "VISIONJOBS_MAX_TENANT_UPLOAD_BYTES")
        assert upload(client, BOB).status_code == 201  # one tenant's quota is its own


def test_an_upload_larger_than_the_whole_quota_is_413(make):
    _, client = make(max_tenant_upload_bytes=1000)
    with client:
        assert_quota(upload(client), 413, "uploads", "VISIONJOBS_MAX_TENANT_UPLOAD_BYTES")


def test_upload_bytes_free_when_retention_ends(make):
    size = len(png_bytes(photo(64, 48)))
    _, client = make(max_tenant_upload_bytes=size, retention_s=1)
    with client:
        assert upload(client).status_code == 201
        assert upload(client).status_code == 429
        time.sleep(1.2)
        assert upload(client).status_code == 201


def test_submit_and_cancel_cannot_pin_params_bytes_without_bound(make):
    _, client = make(max_tenant_params_bytes=20_000)
    with client:
        image = upload(client).json()["id"]
        codes = []
        for _ in range(30):
            r = client.post("/v1/colorizations", json={"image": image, "prompt": PROMPT}, headers=auth(ALICE))
            codes.append(r.status_code)
            if r.status_code != 202:
                break
            client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=auth(ALICE))
        assert 3 <= codes.count(202) < 29 and codes[-1] == 429, codes  # ~1.4 KB each: 14 fit in 20 KB
        assert_quota(r, 429, "params", "VISIONJOBS_MAX_TENANT_PARAMS_BYTES")


def test_a_job_body_larger_than_the_params_quota_is_413(make):
    _, client = make(max_tenant_params_bytes=500)
    with client:
        image = upload(client).json()["id"]
        r = client.post("/v1/colorizations", json={"image": image, "prompt": PROMPT}, headers=auth(ALICE))
        assert_quota(r, 413, "params", "VISIONJOBS_MAX_TENANT_PARAMS_BYTES")


def test_a_retry_at_the_params_quota_gets_its_job(make):
    _, client = make(max_tenant_params_bytes=5_000)
    with client:
        image = upload(client).json()["id"]
        h = {**auth(ALICE), "Idempotency-Key": "k"}
        first = client.post("/v1/colorizations", json={"image": image, "prompt": PROMPT}, headers=h)
        for _ in range(3):
            client.post("/v1/colorizations", json={"image": image, "prompt": PROMPT}, headers=auth(ALICE))
        again = client.post("/v1/colorizations", json={"image": image, "prompt": PROMPT}, headers=h)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


def test_a_submission_whose_dispatch_failed_frees_its_params_bytes(make):
    class DownOnce:
        blocking, failed = False, False

        def dispatch(self, job_id, kind):
            if not self.failed:
                self.failed = True
                raise ConnectionError("broker unreachable")

    _, client = make(dispatcher=DownOnce(), max_tenant_params_bytes=3_000)
    with client:
        image = upload(client).json()["id"]
        body = {"image": image, "prompt": PROMPT}
        assert client.post("/v1/colorizations", json=body, headers=auth(ALICE)).status_code == 503
        assert client.post("/v1/colorizations", json=body, headers=auth(ALICE)).status_code == 202


# --- tuned artifacts ----------------------------------------------------------------------

def _anomaly_model(ctx, model_id: str, stored_bytes: int) -> None:
    ctx.store.put_resource("anomaly_model", model_id, "alice", {
        "name": "m", "backbone": "wide_resnet50_2", "image_size": 64, "thresholds": {"image": 1.0, "pixel": 1.0},
        "counts": {"normal": 1}, "job_id": "job_" + "0" * 24, "created_at": 1.0, "prefix": f"anomaly/alice/{model_id}/",
        "files": [], "stored_bytes": stored_bytes})


def test_jobs_that_make_artifacts_are_refused_at_the_artifact_quota_until_one_is_deleted(make):
    ctx, client = make(max_tenant_artifact_bytes=1_000_000)
    with client:
        images = [upload(client, size=(64, 64)).json()["id"] for _ in range(2)]
        model_id = "anm_" + "7" * 24
        _anomaly_model(ctx, model_id, 1_000_000)  # a fitted model filled the quota
        fit = lambda: client.post("/v1/anomaly-models", json={"name": "m", "images": images}, headers=auth(ALICE))  # noqa: E731
        tune = lambda: client.post("/v1/subject-models", json={"subject_class": "dog", "subject_images": images[:1],  # noqa: E731
                                                               "steps": 10}, headers=auth(ALICE))
        for r in (fit(), tune()):
            assert_quota(r, 429, "artifacts", "VISIONJOBS_MAX_TENANT_ARTIFACT_BYTES")
        # scoring makes no artifact: still accepted
        assert client.post("/v1/anomaly-scores", json={"model_id": model_id, "images": images[:1]},
                           headers=auth(ALICE)).status_code == 202
        assert client.delete(f"/v1/anomaly-models/{model_id}", headers=auth(ALICE)).status_code == 204
        assert fit().status_code == 202 and tune().status_code == 202


def test_another_tenants_artifacts_do_not_count(make):
    ctx, client = make(max_tenant_artifact_bytes=1_000)
    with client:
        _anomaly_model(ctx, "anm_" + "8" * 24, 5_000)
        image = upload(client, BOB, size=(64, 64)).json()["id"]
        r = client.post("/v1/anomaly-models", json={"name": "m", "images": [image]}, headers=auth(BOB))
        assert r.status_code == 202, r.text
