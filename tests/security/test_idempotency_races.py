"""Idempotency and races: an Idempotency-Key is answered before quotas, is bound to the route
and body it was first used with, and a submission whose queue message cannot be sent leaves
nothing behind; a PATCH racing a DELETE never brings a deleted model back.

Decisions recorded here (and in service/jobs.py):
- The key resolves before every quota and admission check (concurrent jobs, subject models,
  live workers): a retry of an accepted request gets its job (200), never 429/503. It still
  counts as one request against the per-minute rate limit, as any request does.
- A failed dispatch removes the job and its key (503 "the job was not created"); the retry
  with the same key creates a new queued job.
- A key reused for another route or body answers 422 `idempotency_key_reused` (IETF
  Idempotency-Key draft). The fingerprint is taken before the server fills in defaults such as
  the seed, so an identical retry always matches.
- A missing anomaly model is refused at submission with 422 naming `model_id` (the contract for
  every referenced id); a model deleted after its scoring job was queued fails that job with
  `invalid_input` "model_id: ... no longer exists", never an internal error naming an object key.
"""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.store.base import JobRecord, new_id
from tests.helpers import ALICE, BOB, KEYS, auth, photo, png_bytes

PROBLEM = "application/problem+json"


class FlakyDispatcher:
    """The broker is down for the next `failures` messages."""

    blocking = False

    def __init__(self, failures: int = 0):
        self.failures, self.sent = failures, []

    def dispatch(self, job_id: str, kind: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        self.sent.append(job_id)


def make(tmp_path, dispatcher=None, **overrides):
    settings = Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, **overrides)
    ctx = build_context(settings, dispatcher=dispatcher)
    return ctx, TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False)


def upload(client, key=ALICE, size=(64, 48)) -> str:
    r = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(*size)), "image/png")}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def colorize(client, image, idem, key=ALICE, **body):
    return client.post("/v1/colorizations", json={"image": image, **body},
                       headers={**auth(key), "Idempotency-Key": idem})


# --- the key before quotas ------------------------------------------------------------------

def test_a_retry_at_the_job_quota_gets_its_job_not_429(tmp_path):
    _, client = make(tmp_path, max_active_jobs=1)
    with client:
        image = upload(client)
        first = colorize(client, image, "k1")
        assert first.status_code == 202
        again = colorize(client, image, "k1")
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        other = colorize(client, image, "k2")
        assert other.status_code == 429 and other.json()["code"] == "quota_exceeded"


def test_a_retry_while_no_worker_serves_the_kind_gets_its_job_not_503(tmp_path):
    ctx, client = make(tmp_path, refuse_unserved=False)
    with client:
        image = upload(client)
        first = colorize(client, image, "k1")
        ctx.settings.refuse_unserved = True  # the workers went away after the first submission
        again = colorize(client, image, "k1")
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert colorize(client, image, "k2").status_code == 503


def test_a_retry_at_the_subject_model_quota_gets_its_job(tmp_path):
    ctx, client = make(tmp_path, max_subject_models=1)
    with client:
        photos = [upload(client, size=(64, 64))]
        body = {"subject_class": "dog", "subject_images": photos, "steps": 10}
        h = {**auth(ALICE), "Idempotency-Key": "tune-1"}
        first = client.post("/v1/subject-models", json=body, headers=h)
        assert first.status_code == 202, first.text
        # the tuning finished and now holds the tenant's one subject model
        ctx.store.put_resource("subject_model", "sbm_" + "1" * 24, "alice", {"prefix": "subjects/x/"})
        again = client.post("/v1/subject-models", json=body, headers=h)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]


# --- the key bound to the request -----------------------------------------------------------

def test_a_key_reused_with_another_body_is_422_problem(tmp_path):
    _, client = make(tmp_path)
    with client:
        image = upload(client)
        assert colorize(client, image, "k1", steps=2).status_code == 202
        r = colorize(client, image, "k1", steps=3)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        assert r.json()["code"] == "idempotency_key_reused"
        assert r.json()["errors"][0]["field"] == "Idempotency-Key"


def test_a_key_reused_with_another_image_is_refused(tmp_path):
    _, client = make(tmp_path)
    with client:
        a, b = upload(client), upload(client, size=(48, 64))
        first = colorize(client, a, "k1")
        r = colorize(client, b, "k1")
        assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"
        assert client.get("/v1/jobs", headers=auth(ALICE)).json()["items"][0]["id"] == first.json()["id"]


def test_a_key_reused_on_another_route_is_refused(tmp_path):
    _, client = make(tmp_path)
    with client:
        image = upload(client)
        assert colorize(client, image, "k1").status_code == 202
        r = client.post("/v1/video-generations", json={"prompts": ["a cat"], "steps": 2}, headers={**auth(ALICE), "Idempotency-Key": "k1"})
        assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"


def test_a_key_reused_with_an_explicit_default_seed_is_refused(tmp_path):
    """The server draws the seed: a body naming one is another request than the one that let it draw."""
    _, client = make(tmp_path)
    with client:
        image = upload(client)
        seed = colorize(client, image, "k1").json()["params"]["seed"]
        r = colorize(client, image, "k1", seed=seed + 1)
        assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"


def test_the_same_key_and_body_is_one_job_and_another_tenant_is_independent(tmp_path):
    _, client = make(tmp_path)
    with client:
        image, bob_image = upload(client), upload(client, BOB)
        a, b = colorize(client, image, "k1", steps=2), colorize(client, image, "k1", steps=2)
        assert (a.status_code, b.status_code) == (202, 200) and a.json()["id"] == b.json()["id"]
        c = colorize(client, bob_image, "k1", key=BOB, steps=5)
        assert c.status_code == 202 and c.json()["id"] != a.json()["id"]


# --- a failed dispatch leaves nothing behind ------------------------------------------------

def test_a_retry_after_a_failed_dispatch_gets_a_queued_job_never_a_canceled_one(tmp_path):
    dispatcher = FlakyDispatcher(failures=1)
    _, client = make(tmp_path, dispatcher=dispatcher)
    with client:
        image = upload(client)
        failed = colorize(client, image, "k1")
        assert failed.status_code == 503 and failed.headers["retry-after"]
        assert failed.json()["code"] == "queue_unavailable" and "not created" in failed.json()["detail"]
        retry = colorize(client, image, "k1")
        assert retry.status_code == 202 and retry.json()["status"] == "queued"
        assert dispatcher.sent == [retry.json()["id"]]


def test_a_failed_dispatch_leaves_no_job_in_the_listing_or_the_counts(tmp_path):
    ctx, client = make(tmp_path, dispatcher=FlakyDispatcher(failures=2))
    with client:
        image = upload(client)
        assert colorize(client, image, "k1").status_code == 503
        assert client.post("/v1/colorizations", json={"image": image}, headers=auth(ALICE)).status_code == 503
        assert client.get("/v1/jobs", headers=auth(ALICE)).json()["items"] == []
        assert sum(ctx.store.counts().values()) == 0


def test_a_job_claimed_although_its_dispatch_raised_stays_accepted(tmp_path):
    """The message went out and then the broker connection broke: a worker may already run it."""
    ctx = None

    class SentThenFailed:
        blocking = False

        def dispatch(self, job_id, kind):
            ctx.store.claim(job_id, "w1", 30)
            raise TimeoutError("no answer after sending")

    ctx, client = make(tmp_path, dispatcher=SentThenFailed())
    with client:
        r = colorize(client, upload(client), "k1")
        assert r.status_code == 202
        assert ctx.store.get_job(r.json()["id"]).status == "running"


# --- PATCH racing DELETE ------------------------------------------------------------------

def _model(ctx, tenant="alice") -> str:
    model_id = "anm_" + new_id("x")[2:26]
    doc = {"name": "m", "model": "patchcore", "backbone": "wide_resnet50_2", "image_size": 64,
           "thresholds": {"image": 1.0, "pixel": 1.0}, "counts": {"normal": 1}, "job_id": "job_" + "0" * 24,
           "created_at": 1.0, "prefix": f"anomaly/{model_id}/", "files": ["memory.safetensors"]}
    ctx.store.put_resource("anomaly_model", model_id, tenant, doc)
    return model_id


def _delete_after_read(ctx, model_id):
    """The next read of the model is followed at once by a DELETE (the race, made deterministic)."""
    astore = ctx.astore
    read = astore.get_resource

    async def racing(kind, resource_id):
        doc = await read(kind, resource_id)
        if resource_id == model_id:
            astore.get_resource = read
            await astore.delete_resource(kind, resource_id)
        return doc

    astore.get_resource = racing


def test_a_patch_racing_a_delete_never_resurrects_the_model(tmp_path):
    ctx, client = make(tmp_path)
    with client:
        model_id = _model(ctx)
        _delete_after_read(ctx, model_id)
        r = client.patch(f"/v1/anomaly-models/{model_id}", json={"image_threshold": 2.0}, headers=auth(ALICE))
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert client.get(f"/v1/anomaly-models/{model_id}", headers=auth(ALICE)).status_code == 404
        assert client.get("/v1/anomaly-models", headers=auth(ALICE)).json()["items"] == []


def test_scoring_a_model_deleted_during_a_patch_is_refused_at_submission(tmp_path):
    ctx, client = make(tmp_path)
    with client:
        model_id = _model(ctx)
        _delete_after_read(ctx, model_id)
        client.patch(f"/v1/anomaly-models/{model_id}", json={"image_threshold": 2.0}, headers=auth(ALICE))
        r = client.post("/v1/anomaly-scores", json={"model_id": model_id, "images": [upload(client)]},
                        headers=auth(ALICE))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "model_id"


def test_a_patch_of_a_live_model_still_works(tmp_path):
    ctx, client = make(tmp_path)
    with client:
        model_id = _model(ctx)
        r = client.patch(f"/v1/anomaly-models/{model_id}", json={"image_threshold": 2.0}, headers=auth(ALICE))
        assert r.status_code == 200 and r.json()["thresholds"]["image"] == 2.0


def test_a_score_job_whose_model_files_are_gone_fails_without_naming_object_keys(tmp_path):
    from service.storage.local import LocalObjectStore
    from worker.errors import InvalidInput
    from worker.jobs.anomaly import _load_model

    class Cache:
        def get(self, key, load):
            return load()

    class Runner:
        objects, cache, device = LocalObjectStore(tmp_path, b"s" * 32), Cache(), "cpu"

    class Ctx:
        runner = Runner()

        def pipeline(self, name):
            return None

    doc = {"id": "anm_" + "1" * 24, "prefix": "anomaly/anm_1/", "files": ["memory.safetensors"], "created_at": 1.0}
    with pytest.raises(InvalidInput) as failed:
        _load_model(Ctx(), doc)
    assert str(failed.value) == f"model_id: {doc['id']} no longer exists"
    assert "anomaly/" not in str(failed.value)
