"""Profiles that tell the truth: `auto` resolved once per kind through the same path (anomaly
included), the CSCV scorer resolved before any denoising, `model_profile` = what ran, fitted
anomaly models that load back from their artifact alone, and a preload that warms every kind."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.kinds import KINDS
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes, wait_final
from tests.models.anomaly_data import make_benchmark


@pytest.fixture
def service(tmp_path, request):
    """API + in-process worker on one store, as `visionjobs run` (profile auto, no model dir);
    a parametrized test may override worker settings."""
    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner

    overrides = {"model_profile": "auto", "model_dir": None, **getattr(request, "param", {})}
    settings = WorkerSettings(data_dir=tmp_path / "data", api_keys=KEYS, redis_url=None, s3_bucket=None,
                              progress_interval_s=0.05, **overrides)
    ctx = build_context(settings)
    runner = Runner(settings, ctx.store, ctx.objects, name="truth")
    stop = threading.Event()
    thread = None

    def start():
        nonlocal thread
        thread = threading.Thread(target=poll_loop, args=(runner, list(KINDS), stop, 0.05), daemon=True)
        thread.start()

    with TestClient(create_app(ctx, run_reaper=False)) as client:
        client.runner, client.start = runner, start
        yield client
        stop.set()
        if thread:
            thread.join(timeout=60)


def upload(client, data: bytes, name="a.png") -> str:
    r = client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")}, headers=auth(ALICE))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post(client, path, body) -> dict:
    r = client.post(path, json=body, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    return wait_final(client, r.json()["id"])


# ---- anomaly under `auto` without weights: the tiny backbone, and the API matches the direct call

def test_auto_without_weights_fits_with_the_tiny_backbone_and_matches_the_direct_call(service):
    from models.anomaly import PatchCoreConfig, auroc, fit_patchcore
    from models.anomaly.backbone import build_backbone
    from models.anomaly.loader import load_fitted

    service.start()
    bench = make_benchmark("brick", crop=96, n_train=10, n_test_normal=6, n_test_per_defect=2, seed=0)
    fit = post(service, "/v1/anomaly-models", {"name": "brick", "seed": 0, "image_size": 128,
                                               "images": [upload(service, png_bytes(im)) for im in bench.train]})
    assert fit["status"] == "succeeded", fit["error"]
    assert fit["model_profile"] == "tiny"
    model_id = fit["result"]["model_id"]
    doc = service.runner.store.get_resource("anomaly_model", model_id)
    assert doc["backbone"] == "tiny" and doc["profile"] == "tiny" and doc["backbone_weights"] == "random:seed=0"
    scored = post(service, "/v1/anomaly-scores", {"model_id": model_id,
                                                  "images": [upload(service, png_bytes(s.image)) for s in bench.test]})
    assert scored["status"] == "succeeded" and scored["model_profile"] == "tiny"
    labels = [s.label for s in bench.test]
    api_auroc = auroc([it["score"] for it in scored["result"]["items"]], labels)

    direct = fit_patchcore(bench.train, PatchCoreConfig(backbone="tiny", image_size=128, seed=0),
                           backbone=build_backbone("tiny", seed=0))
    direct_scores = [it.score for it in direct.score([s.image for s in bench.test])]
    assert api_auroc == pytest.approx(auroc(direct_scores, labels)) and api_auroc > 0.9
    np.testing.assert_allclose([it["score"] for it in scored["result"]["items"]], direct_scores, rtol=1e-4)
    # the artifact alone rebuilds the model: same backbone (fingerprint checked), same scores
    files = {name: service.runner.objects.get(doc["prefix"] + name) for name in doc["files"]}
    again = load_fitted(files)
    np.testing.assert_allclose([it.score for it in again.score([s.image for s in bench.test])], direct_scores, rtol=1e-4)


def test_an_artifact_records_pretrained_weights_and_refuses_others(tmp_path):
    from safetensors.torch import save_file

    from models.anomaly import ArtifactError, PatchCoreConfig, fit_patchcore, read_artifact_meta, save_artifact
    from models.anomaly.backbone import weights_fingerprint
    from models.anomaly.loader import AnomalyBackbones, load_fitted
    from tests.hub_repos import _backbone_state_dict

    (tmp_path / "anomaly").mkdir()
    save_file(_backbone_state_dict("resnet18", 1), tmp_path / "anomaly" / "resnet18.safetensors")
    backbone = AnomalyBackbones("pretrained", tmp_path).get("resnet18")
    assert backbone.profile == "pretrained" and backbone.weights == "file:resnet18.safetensors"
    images = [im.resize((64, 64)) for im in make_benchmark("grass", crop=64, n_train=3, n_test_normal=1,
                                                             n_test_per_defect=0, defects=()).train]
    model = fit_patchcore(images, PatchCoreConfig(backbone="resnet18", image_size=64, seed=3), backbone=backbone.net)
    files = save_artifact(model)
    meta = read_artifact_meta(files)["backbone"]
    assert meta["fingerprint"] == weights_fingerprint(backbone.net) and meta["weights"] == "file:resnet18.safetensors"
    # a worker of any profile scores it with these weights: the artifact decides, not the profile
    assert AnomalyBackbones("tiny", tmp_path).for_artifact(read_artifact_meta(files)).profile == "pretrained"
    loaded = load_fitted(files, tmp_path)
    assert loaded.score(images)[0].score == pytest.approx(model.score(images)[0].score, rel=1e-5)
    save_file(_backbone_state_dict("resnet18", 2), tmp_path / "anomaly" / "resnet18.safetensors")  # other weights
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_fitted(files, tmp_path)


# ---- video.generate: the CSCV scorer is resolved before any denoising --------------------------

@pytest.fixture(scope="module")
def cogvideox_dir(tmp_path_factory):
    """A model dir with a (tiny) CogVideoX folder and no CLIP ViT-B/32."""
    from diffusers import CogVideoXDDIMScheduler

    from models import profiles

    root = tmp_path_factory.mktemp("models")
    tiny = profiles.load_video_generation("tiny")
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        getattr(tiny, name).save_pretrained(root / profiles.COGVIDEOX_DIR / name)
    CogVideoXDDIMScheduler.from_config(tiny.scheduler.config).save_pretrained(root / profiles.COGVIDEOX_DIR / "scheduler")
    return root


@pytest.mark.parametrize("service", [{"model_profile": "auto"}, {"model_profile": "pretrained"}], indirect=True)
def test_a_job_asking_for_cscv_without_clip_fails_before_any_denoising(service, cogvideox_dir):
    service.runner.settings.model_dir = cogvideox_dir
    assert service.runner.profile_for("video.generate") == "pretrained"  # auto: the video model is there
    pipe = service.runner.pipeline("video.generate", "video.generate")
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        service.start()
        job = post(service, "/v1/video-generations", {"prompts": ["a cat"], "steps": 1, "metrics": ["cscv"], "seed": 1})
        assert job["status"] == "failed" and job["error"]["code"] == "models_missing"
        assert "clip-vit-base-patch32" in job["error"]["message"] and calls == []  # no CSCV from a random CLIP either
        if service.runner.settings.model_profile == "auto":  # without the metric the job runs, on the real weights
            ok = post(service, "/v1/video-generations", {"prompts": ["a cat"], "steps": 1, "seed": 1})
            assert ok["status"] == "succeeded" and ok["model_profile"] == "pretrained" and calls
    finally:
        handle.remove()


# ---- preload: every kind warm, and the first job of each kind loads nothing --------------------

def test_preload_warms_every_kind_and_first_jobs_load_no_model(service, monkeypatch):
    from models import profiles
    from tests.api.test_video_edit_api import clip_mp4

    service.runner.settings.model_profile = "tiny"
    service.runner.preload(list(KINDS))
    loads = []
    real_load = profiles.load
    monkeypatch.setattr(profiles, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    service.start()
    bench = make_benchmark("brick", crop=64, n_train=3, n_test_normal=1, n_test_per_defect=0, defects=())
    fit = post(service, "/v1/anomaly-models", {"name": "b", "image_size": 64,
                                               "images": [upload(service, png_bytes(im)) for im in bench.train]})
    jobs = [fit,
            post(service, "/v1/anomaly-scores", {"model_id": fit["result"]["model_id"],
                                                 "images": [upload(service, png_bytes(bench.test[0].image))]}),
            post(service, "/v1/colorizations", {"image": upload(service, png_bytes(photo(64, 64))), "steps": 1}),
            post(service, "/v1/video-generations", {"prompts": ["a cat"], "steps": 1, "metrics": ["cscv"]}),
            post(service, "/v1/video-edits", {"video": upload(service, clip_mp4(frames=4, size=64), "c.mp4"),
                                              "source_prompt": "a man", "edits": ["a robot"], "tune_steps": 1,
                                              "frames": 2, "steps": 1})]
    subject = [upload(service, png_bytes(photo(64, 64)))]
    tuned = post(service, "/v1/subject-models", {"subject_images": subject, "subject_class": "person", "steps": 1})
    jobs += [tuned,
             post(service, "/v1/subject-generations", {"subject_images": subject, "subject_class": "person",
                                                       "prompt": "on the moon", "steps": 1, "width": 64, "height": 64,
                                                       "metrics": ["clip_t"]}),
             post(service, "/v1/subject-generations", {"subject_model": tuned["result"]["subject_model"],
                                                       "prompt": "on the moon", "steps": 1, "width": 64, "height": 64})]
    assert [j["kind"] for j in jobs] == ["anomaly.fit", "anomaly.score", "colorize", "video.generate", "video.edit",
                                         "subject.tune", "subject.generate", "subject.generate"]
    assert all(j["status"] == "succeeded" and j["model_profile"] == "tiny" for j in jobs), [j["error"] for j in jobs]
    assert loads == []  # every model was loaded by the preload


def test_worker_preload_with_the_default_queues_starts(tmp_path):
    from tests.integration.procs import VISIONJOBS, Proc, clean_env

    proc = Proc([*VISIONJOBS, "worker", "--preload"],
                clean_env(VISIONJOBS_MODEL_PROFILE="tiny", VISIONJOBS_DATA_DIR=str(tmp_path)), tmp_path / "worker.log")
    try:
        import time

        deadline = time.monotonic() + 240
        while "polling" not in proc.log() and time.monotonic() < deadline:
            assert proc.p.poll() is None or "polling" in proc.log(), proc.log()[-3000:]
            assert "exited with" not in proc.log(), proc.log()[-3000:]
            time.sleep(0.5)
        log = proc.log()
        assert "polling" in log, log[-3000:]
        for kind in KINDS:
            assert f"preloading {kind} (tiny profile" in log
        assert "Traceback" not in log
    finally:
        proc.stop()
