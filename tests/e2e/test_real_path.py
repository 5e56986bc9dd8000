"""The road from a clean model dir to real outputs, offline: a local Hub (tests/hubserver.py)
serves every repository `visionjobs models fetch` names, in the real file layout, holding
small-config weights written by tests/hub_repos.py (Control Color as the official Lightning
checkpoint, CogVideoX and SD 1.5 diffusers folders, timm backbone safetensors, CLIP tokenizer
files, BLIP-Diffusion with .bin weights, the BERT tokenizer, DINO). `visionjobs models fetch` (every kind, conversion included) -> a worker with
VISIONJOBS_MODEL_PROFILE=pretrained -> one job of every kind through the API, each reporting
`model_profile: pretrained`."""
from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.helpers import ALICE, KEYS, auth, photo, png_bytes, wait_final
from tests.hub_repos import CC_CONVERT_CONFIG, all_repos
from tests.hubserver import HubServer


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(all_repos(tmp_path_factory.mktemp("hub"))) as server:
        yield server


def upload(client, data: bytes, name: str) -> str:
    r = client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")}, headers=auth(ALICE))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post(client, path: str, body: dict) -> str:
    r = client.post(path, json=body, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_fetch_every_kind_then_a_pretrained_worker_runs_every_kind(hub, tmp_path, monkeypatch):
    from service.app import build_context, create_app
    from service.kinds import KINDS
    from tests.api.test_video_edit_api import clip_mp4
    from tests.models.anomaly_data import make_benchmark
    from visionjobs.cli import main
    from worker.capabilities import report
    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner

    models = tmp_path / "models"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    config = tmp_path / "controlcolor-config.json"
    config.write_text(json.dumps(CC_CONVERT_CONFIG))

    # --- fetch: every kind, conversion included ---
    cli = CliRunner()
    done = cli.invoke(main, ["models", "fetch", "--model-dir", str(models), "--controlcolor-config", str(config)])
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "total " in done.output.split("downloading")[0]  # the plan with sizes comes first
    assert hub.downloaded("stable-diffusion-v1-5/stable-diffusion-v1-5") == {
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}  # no fp16 / non-ema / .ckpt variant
    assert hub.downloaded("openai/clip-vit-base-patch32") == {  # no TF / Flax; the tokenizer for CLIP-T
        "config.json", "pytorch_model.bin", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert hub.downloaded("Salesforce/blipdiffusion") == {
        "model_index.json", "scheduler/scheduler_config.json", "image_processor/preprocessor_config.json",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json", "qformer/config.json", "qformer/pytorch_model.bin",
        "text_encoder/config.json", "text_encoder/pytorch_model.bin", "unet/config.json",
        "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.bin"}  # no controlnet/
    assert hub.downloaded("google-bert/bert-base-uncased") == {"vocab.txt", "tokenizer_config.json"}
    assert (models / "anomaly" / "wide_resnet50_2.safetensors").is_file()
    assert (models / "controlcolor" / "unet" / "config.json").is_file()  # converted by fetch itself
    checked = cli.invoke(main, ["models", "check", "--model-dir", str(models), "--json"])
    assert checked.exit_code == 0, checked.output
    assert {r["kind"]: r["auto"] for r in json.loads(checked.output)["kinds"]} == {k: "pretrained" for k in KINDS}

    # --- a worker with VISIONJOBS_MODEL_PROFILE=pretrained, and the API that refuses what it cannot run ---
    monkeypatch.setenv("VISIONJOBS_MODEL_PROFILE", "pretrained")
    monkeypatch.setenv("VISIONJOBS_MODEL_DIR", str(models))
    monkeypatch.setenv("VISIONJOBS_REFUSE_UNSERVED", "true")
    settings = WorkerSettings(data_dir=tmp_path / "data", api_keys=KEYS, redis_url=None, s3_bucket=None,
                              progress_interval_s=0.05)
    assert settings.model_profile == "pretrained" and settings.refuse_unserved
    ctx = build_context(settings)
    runner = Runner(settings, ctx.store, ctx.objects, name="e2e")
    report(runner, list(KINDS))
    stop = threading.Event()
    worker = threading.Thread(target=poll_loop, args=(runner, list(KINDS), stop, 0.05), daemon=True)
    worker.start()
    try:
        with TestClient(create_app(ctx, run_reaper=False)) as api:
            ready = api.get("/readyz").json()["kinds"]
            assert ready == {k: {"workers": 1, "ready": 1} for k in KINDS}
            subject_photos = [upload(api, png_bytes(photo(64 + 8 * k, 64)), "s.png") for k in range(3)]
            bench = make_benchmark("brick", crop=64, n_train=4, n_validation=0, n_test_normal=1, n_test_per_defect=1,
                                   defects=("stain",), seed=0)
            jobs = {
                "colorize": post(api, "/v1/colorizations", {"image": upload(api, png_bytes(photo(64, 48)), "p.png"),
                                                             "prompt": "a red car", "steps": 1, "seed": 1}),
                "video.generate": post(api, "/v1/video-generations", {"prompts": ["a cat walks on grass"], "steps": 1,
                                                                       "metrics": ["cscv"], "seed": 1}),
                "video.edit": post(api, "/v1/video-edits", {
                    "video": upload(api, clip_mp4(frames=6, size=64), "clip.mp4"), "source_prompt": "a man",
                    "edits": ["a robot"], "tune_steps": 1, "frames": 2, "width": 64, "height": 64, "steps": 1,
                    "seed": 1}),
                "anomaly.fit": post(api, "/v1/anomaly-models", {
                    "name": "brick", "images": [upload(api, png_bytes(im), "n.png") for im in bench.train],
                    "image_size": 64, "seed": 0}),
                "subject.generate": post(api, "/v1/subject-generations", {
                    "subject_images": subject_photos, "subject_class": "person", "prompt": "on the moon",
                    "metrics": ["clip_i", "clip_t", "dino"], "steps": 1, "width": 64, "height": 64, "seed": 1}),
                "subject.tune": post(api, "/v1/subject-models", {
                    "subject_images": subject_photos, "subject_class": "person", "steps": 2, "seed": 1}),
            }
            finals = {kind: wait_final(api, job_id, timeout=300) for kind, job_id in jobs.items()}
            fit = finals["anomaly.fit"]
            assert fit["status"] == "succeeded", fit["error"]
            score = post(api, "/v1/anomaly-scores", {"model_id": fit["result"]["model_id"],
                                                     "images": [upload(api, png_bytes(s.image), "t.png")
                                                                for s in bench.test]})
            finals["anomaly.score"] = wait_final(api, score, timeout=300)
            tuned = finals["subject.tune"]
            assert tuned["status"] == "succeeded", tuned["error"]
            expert = post(api, "/v1/subject-generations", {"subject_model": tuned["result"]["subject_model"],
                                                            "prompt": "on the moon", "steps": 1, "width": 64,
                                                            "height": 64, "seed": 1})
            finals["subject.generate (expert)"] = wait_final(api, expert, timeout=300)
            for kind, job in finals.items():
                assert job["status"] == "succeeded", (kind, job["error"])
                assert job["model_profile"] == "pretrained", kind
            assert 0 < finals["video.generate"]["result"]["metrics"]["cscv"] <= 1
            assert set(finals["subject.generate"]["result"]["metrics"]) == {"clip_i", "clip_t", "dino"}
            assert finals["subject.generate (expert)"]["result"]["tuning"] == "skipped"
            sbm = ctx.store.get_resource("subject_model", tuned["result"]["subject_model"])
            assert sbm["base_model"] == "stable-diffusion-v1-5" and sbm["profile"] == "pretrained"
            model = ctx.store.get_resource("anomaly_model", fit["result"]["model_id"])
            assert model["backbone"] == "wide_resnet50_2" and model["backbone_weights"] == "file:wide_resnet50_2.safetensors"
    finally:
        stop.set()
        worker.join(timeout=60)
