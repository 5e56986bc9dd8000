"""Refusing what no live worker can run: 503 + Retry-After without a worker for the kind, 422
naming the missing files when the live workers lack weights (or an optional feature's), and
/readyz counting live workers per kind. Workers report through the real capability probes."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.kinds import KINDS
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes

VIDEO = {"prompts": ["a cat"], "steps": 1}


@pytest.fixture
def api(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", api_keys=KEYS, redis_url=None, s3_bucket=None,
                        refuse_unserved=True)
    ctx = build_context(settings)
    with TestClient(create_app(ctx, run_reaper=False)) as client:
        client.ctx = ctx
        yield client


def worker_reports(api, tmp_path, profile: str, model_dir=None, name="w1"):
    """A real Runner's capability reports for every kind (no model is loaded to make them)."""
    from worker.capabilities import report
    from worker.config import WorkerSettings
    from worker.runner import Runner

    settings = WorkerSettings(data_dir=tmp_path / "data", model_profile=profile, model_dir=model_dir,
                              redis_url=None, s3_bucket=None)
    runner = Runner(settings, api.ctx.store, api.ctx.objects, name=name)
    report(runner, list(KINDS))
    return runner


def submit_colorize(api):
    r = api.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 64)), "image/png")}, headers=auth(ALICE))
    return api.post("/v1/colorizations", json={"image": r.json()["id"], "steps": 1}, headers=auth(ALICE))


def touch(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_no_worker_for_the_kind_is_503_with_retry_after(api, tmp_path):
    assert api.get("/readyz").json()["kinds"] == {k: {"workers": 0, "ready": 0} for k in KINDS}
    r = submit_colorize(api)
    assert r.status_code == 503 and r.headers["Retry-After"] == "30"
    assert r.json()["code"] == "no_worker" and "colorize" in r.json()["detail"]
    assert api.get("/v1/jobs", headers=auth(ALICE)).json()["items"] == []  # nothing was queued
    # a tiny worker serving every kind: accepted, and /readyz counts it
    worker_reports(api, tmp_path, "tiny")
    assert submit_colorize(api).status_code == 202
    assert api.get("/readyz").json()["kinds"] == {k: {"workers": 1, "ready": 1} for k in KINDS}


def test_pretrained_workers_with_an_empty_model_dir_get_422_naming_the_files(api, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    worker_reports(api, tmp_path, "pretrained", empty, "w1")
    worker_reports(api, tmp_path, "pretrained", empty, "w2")
    assert api.get("/readyz").json()["kinds"]["colorize"] == {"workers": 2, "ready": 0}
    r = submit_colorize(api)
    assert r.status_code == 422 and r.json()["code"] == "models_missing"
    assert "controlcolor/unet/config.json" in r.json()["detail"] and "models fetch --kind colorize" in r.json()["detail"]
    r = api.post("/v1/video-generations", json=VIDEO, headers=auth(ALICE))
    assert r.status_code == 422 and "cogvideox-2b/transformer/config.json" in r.json()["errors"][0]["missing"]
    up = api.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 64)), "image/png")},
                  headers=auth(ALICE)).json()["id"]
    r = api.post("/v1/anomaly-models", json={"name": "x", "images": [up]}, headers=auth(ALICE))
    assert r.status_code == 422 and "anomaly/wide_resnet50_2.safetensors" in r.json()["detail"]


def test_optional_features_are_refused_by_field_when_no_ready_worker_has_them(api, tmp_path):
    from models.profiles import required_weights

    models = tmp_path / "models"
    touch(models, required_weights("video.generate") + required_weights("anomaly"))  # present, so the kinds are ready
    worker_reports(api, tmp_path, "pretrained", models)
    assert api.post("/v1/video-generations", json=VIDEO, headers=auth(ALICE)).status_code == 202
    r = api.post("/v1/video-generations", json={**VIDEO, "metrics": ["cscv"]}, headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "metrics"
    assert "clip-vit-base-patch32/config.json" in r.json()["detail"]
    up = api.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 64)), "image/png")},
                  headers=auth(ALICE)).json()["id"]
    r = api.post("/v1/anomaly-models", json={"name": "x", "images": [up], "backbone": "resnet18"}, headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "backbone"
    assert "anomaly/resnet18.safetensors" in r.json()["detail"]
    # the default backbone (whose weights are there) and the random `tiny` one are accepted
    for backbone in (None, "tiny"):
        body = {"name": "x", "images": [up], **({"backbone": backbone} if backbone else {})}
        assert api.post("/v1/anomaly-models", json=body, headers=auth(ALICE)).status_code == 202


def test_off_switch_queues_for_a_worker_to_come(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, refuse_unserved=False)
    with TestClient(create_app(build_context(settings), run_reaper=False)) as client:
        assert submit_colorize(client).status_code == 202


def test_subject_metrics_need_their_weights_on_a_live_worker(api, tmp_path):
    """A pretrained worker with the subject models but not the metric encoders: generations
    are accepted, one asking for metrics is refused naming `metrics` and the missing files."""
    from models.profiles import required_weights

    models = tmp_path / "models"
    touch(models, required_weights("subject.in_context") + required_weights("subject.expert"))
    worker_reports(api, tmp_path, "pretrained", models)
    assert api.get("/readyz").json()["kinds"]["subject.generate"] == {"workers": 1, "ready": 1}
    up = api.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 64)), "image/png")},
                  headers=auth(ALICE)).json()["id"]
    body = {"subject_images": [up], "subject_class": "person", "prompt": "on the moon"}
    assert api.post("/v1/subject-generations", json=body, headers=auth(ALICE)).status_code == 202
    r = api.post("/v1/subject-generations", json={**body, "metrics": ["clip_t"]}, headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "metrics"
    assert "clip-vit-base-patch32/config.json" in r.json()["errors"][0]["missing"]
    touch(models, required_weights("subject.metrics"))
    worker_reports(api, tmp_path, "pretrained", models)
    assert api.post("/v1/subject-generations", json={**body, "metrics": ["clip_t"]},
                    headers=auth(ALICE)).status_code == 202
