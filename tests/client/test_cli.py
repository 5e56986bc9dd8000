"""`visionjobs submit ...` and `visionjobs jobs ...` against the running service (CliRunner,
in process; the service is the session's subprocess)."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.helpers import ALICE, photo
from visionjobs.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def vj(service):
    """Run `visionjobs ARGS...` with --url/--api-key appended to the leaf command."""
    runner = CliRunner()

    def run(*args, auth: bool = True, env=None, code: int | None = 0):
        argv = [str(a) for a in args] + (["--url", service.url, "--api-key", ALICE] if auth else [])
        result = runner.invoke(main, argv, env=env, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return result

    return run


def test_submit_colorize_wait_out_writes_the_png(vj, tmp_path):
    source = photo(90, 70)
    source.save(tmp_path / "photo.jpg", quality=95)
    (tmp_path / "strokes.json").write_text(json.dumps([{"color": "#3366ff", "width": 5, "points": [[5, 5], [40, 30]]}]))
    out = tmp_path / "out"
    r = vj("submit", "colorize", tmp_path / "photo.jpg", "--prompt", "a blue sky", "--strokes", tmp_path / "strokes.json",
           "--steps", "2", "--seed", "4", "--wait", "--out", out)
    job_id = r.stdout.split()[0]
    png = out / job_id / "output_0.png"  # <out>/<job id>/...: a second job never overwrites the first one's files
    assert job_id.startswith("job_") and png.is_file() and Image.open(png).size == (90, 70)
    assert "succeeded" in r.stdout and str(png) in r.stdout
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~umask  # 0644 under the usual umask, not mkstemp's 0600
    # --json: one JSON document on stdout, with the files written
    r = vj("submit", "colorize", tmp_path / "photo.jpg", "--steps", "1", "--param", "guidance.scale=3",
           "--param", "sag_scale=0", "--wait", "--out", out / "j", "--json")
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["files"] == [str(out / "j" / job["id"] / "output_0.png")]
    assert job["params"]["guidance"]["scale"] == 3 and job["params"]["sag_scale"] == 0
    assert job["params"]["strokes"] == []


def test_submit_colorize_guidance_mode_gets_its_own_default_scale(vj, tmp_path):
    """`--guidance autoguidance` without `--guidance-scale` runs at autoguidance's 2.0 (it used to
    reach the pipeline as CFG's 7.0); the fidelity switches reach the params."""
    photo(64, 64).save(tmp_path / "p.png")
    job = json.loads(vj("submit", "colorize", tmp_path / "p.png", "--steps", "1", "--guidance", "autoguidance",
                        "--no-auto-caption", "--parity", "official", "--json").stdout)
    assert job["params"]["guidance"] == {"mode": "autoguidance", "scale": 2.0}
    assert job["params"]["auto_caption"] is False
    assert job["params"]["parity"] == {"sag_heads": "official", "working_size": "official", "timesteps": "uniform",
                                       "gray_input": "official", "l_merge": "official"}


def test_jobs_list_json_parses_and_filters(vj, tmp_path):
    photo(64, 64).save(tmp_path / "p.png")
    job_id = vj("submit", "colorize", tmp_path / "p.png", "--steps", "1").stdout.strip()
    assert job_id.startswith("job_")
    page = json.loads(vj("jobs", "list", "--json", "--kind", "colorize", "--limit", "5").stdout)
    assert set(page) == {"items", "next_cursor"} and job_id in [j["id"] for j in page["items"]]
    assert all(j["kind"] == "colorize" for j in page["items"])
    every = json.loads(vj("jobs", "list", "--json", "--all", "--limit", "2").stdout)
    assert job_id in [j["id"] for j in every["items"]] and every["next_cursor"] is None
    table = vj("jobs", "list", "--limit", "3").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "KIND", "STATUS"] and len(table) == 1 + min(3, len(every["items"]))
    shown = json.loads(vj("jobs", "show", job_id, "--wait", "30", "--json").stdout)
    assert shown["id"] == job_id and shown["status"] == "succeeded"


def test_jobs_cancel_and_watch(vj, tmp_path):
    photo(512, 512).save(tmp_path / "big.png")
    job_id = vj("submit", "colorize", tmp_path / "big.png", "--steps", "100").stdout.strip()
    canceled = json.loads(vj("jobs", "cancel", job_id, "--json").stdout)
    assert canceled["id"] == job_id
    r = vj("jobs", "watch", job_id, "--progress", "lines", "--timeout", "60", code=1)  # canceled: exit 1
    assert "canceled" in r.stdout and "error: canceled" in r.stdout
    assert json.loads(vj("jobs", "show", job_id, "--json").stdout)["status"] == "canceled"


def test_watch_shows_live_progress(vj, tmp_path):
    photo(96, 96).save(tmp_path / "p.png")
    job_id = vj("submit", "colorize", tmp_path / "p.png", "--steps", "6").stdout.strip()
    r = vj("jobs", "watch", job_id, "--progress", "lines", "--out", tmp_path / "w")
    lines = r.stderr.strip().splitlines()
    assert lines and job_id in lines[-1] and "succeeded" in lines[-1] and lines[-1].endswith("100%")
    assert (tmp_path / "w" / job_id / "output_0.png").is_file()
    job_id = vj("submit", "colorize", tmp_path / "p.png", "--steps", "3").stdout.strip()
    r = vj("jobs", "watch", job_id, "--progress", "bar", "--json")  # the rich bar on stderr, JSON on stdout
    assert json.loads(r.stdout)["status"] == "succeeded" and "100%" in r.stderr


def test_url_and_key_from_the_environment_and_errors(vj, service, tmp_path):
    from visionjobs_client import API_KEY_ENV, URL_ENV

    r = vj("jobs", "list", "--json", auth=False, env={URL_ENV: service.url, API_KEY_ENV: ALICE})
    assert "items" in json.loads(r.stdout)
    r = vj("jobs", "list", auth=False, env={URL_ENV: service.url, API_KEY_ENV: "wrong-key-0123456789"}, code=3)
    assert "401" in r.stderr and "unauthorized" in r.stderr
    r = vj("jobs", "show", "job_" + "0" * 24, code=3)
    assert "404" in r.stderr
    photo(64, 64).save(tmp_path / "p.png")
    r = vj("submit", "colorize", tmp_path / "p.png", "--steps", "1000", code=3)
    assert "steps:" in r.stderr and "limit 100" in r.stderr
    assert r.stderr.count("less than or equal to 100") == 1  # the field's message once, not in the headline too
    r = vj("submit", "colorize", tmp_path / "missing.png", code=2)
    assert "no such file" in r.stderr
    r = vj("submit", "colorize", tmp_path / "p.png", "--webhook", "https://example.com/hook", code=2)
    assert "--webhook-secret" in r.stderr


def test_submit_video_generate_and_edit(vj, tmp_path):
    from tests.api.test_video_edit_api import clip_mp4

    r = vj("submit", "video-generate", "a red fox", "--steps", "2", "--width", "32", "--height", "32", "--seed", "1",
           "--no-kv-sharing", "--wait", "--out", tmp_path / "gen", "--json")
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["params"]["kv_sharing"]["enabled"] is False
    assert sorted(p.rsplit("/", 1)[-1] for p in job["files"]) == ["thumbnail.jpg", "video.mp4"]
    (tmp_path / "clip.mp4").write_bytes(clip_mp4(frames=6, size=64))
    r = vj("submit", "video-edit", tmp_path / "clip.mp4", "--source-prompt", "a man", "--edit", "a robot",
           "--tune-steps", "2", "--frames", "4", "--frame-stride", "1", "--width", "64", "--height", "64", "--steps", "2",
           "--wait", "--json")
    edited = json.loads(r.stdout)
    assert edited["status"] == "succeeded" and edited["result"]["tuning"] == "ran"
    assert edited["params"]["frame_stride"] == 1  # a 6-frame clip: 4 frames at the official stride 2 need 7
    r = vj("submit", "video-edit", "--tuned-model", edited["result"]["tuned_model_id"], "--edit", "a bear",
           "--steps", "2", "--wait", "--out", tmp_path / "re", "--json")
    reused = json.loads(r.stdout)
    assert reused["result"]["tuning"] == "skipped" and (tmp_path / "re" / reused["id"] / "edit_0.mp4").is_file()
    vj("submit", "video-edit", "--edit", "x", code=2)  # neither a clip nor a tuned model
    tuned = edited["result"]["tuned_model_id"]
    listed = vj("tuned-models", "list").stdout.splitlines()
    assert listed[0].split()[:2] == ["ID", "FRAMES"]
    row = next(line for line in listed if line.startswith(tuned))
    assert row.split()[1:3] == ["4x64x64", "2"] and row.endswith("a man")
    assert tuned in [m["id"] for m in json.loads(vj("tuned-models", "list", "--all", "--json").stdout)["items"]]
    assert vj("tuned-models", "delete", tuned).stdout.strip() == f"deleted {tuned}"
    assert tuned not in vj("tuned-models", "list", "--all").stdout
    assert "404 not_found" in vj("tuned-models", "delete", tuned, code=3).stderr


def test_submit_anomaly_fit_from_a_directory_then_score(vj, tmp_path):
    from tests.models.anomaly_data import make_benchmark

    bench = make_benchmark("grass", crop=64, n_train=5, n_validation=0, n_test_normal=1, n_test_per_defect=0, seed=1)
    (tmp_path / "train").mkdir()
    for i, im in enumerate(bench.train):
        im.save(tmp_path / "train" / f"{i}.png")
    bench.test[0].image.save(tmp_path / "test.png")
    fit = json.loads(vj("submit", "anomaly-fit", tmp_path / "train", "--name", "grass", "--backbone", "tiny",
                        "--image-size", "64", "--wait", "--json").stdout)
    assert fit["status"] == "succeeded" and fit["result"]["counts"]["train"] == 5
    scored = json.loads(vj("submit", "anomaly-score", fit["result"]["model_id"], tmp_path / "test.png", "--wait",
                           "--out", tmp_path / "maps", "--json").stdout)
    assert scored["status"] == "succeeded" and len(scored["result"]["items"]) == 1 and len(scored["files"]) == 4
    assert scored["result"]["items"][0]["filename"] == "test.png"


def test_anomaly_fit_prints_the_model_id_scores_print_a_table_and_models_are_managed(vj, tmp_path):
    from tests.models.anomaly_data import make_benchmark

    bench = make_benchmark("grass", crop=64, n_train=4, n_validation=0, n_test_normal=1, n_test_per_defect=1, seed=2)
    (tmp_path / "train").mkdir()
    for i, im in enumerate(bench.train):
        im.save(tmp_path / "train" / f"{i}.png")
    for i, sample in enumerate(bench.test):
        sample.image.save(tmp_path / f"inspect_{i}.png")
    r = vj("submit", "anomaly-fit", tmp_path / "train", "--name", "lawn", "--backbone", "tiny", "--image-size", "64",
           "--wait")
    model_ids = re.findall(r"anomaly model: (anm_[0-9a-f]{24})", r.stdout)
    assert len(model_ids) == 1, r.stdout
    model_id = model_ids[0]
    assert f"visionjobs submit anomaly-score {model_id}" in r.stdout
    r = vj("submit", "anomaly-score", model_id, tmp_path / "inspect_0.png", tmp_path / "inspect_1.png", "--wait")
    table = [line.split() for line in r.stdout.splitlines() if line.strip().startswith(("input", "inspect_"))]
    assert table[0] == ["input", "score", "normalized", "label"]
    assert [row[0] for row in table[1:]] == ["inspect_0.png", "inspect_1.png"]
    assert all(row[3] in ("normal", "anomalous") and float(row[1]) >= 0 for row in table[1:])
    assert model_id in vj("anomaly-models", "list").stdout
    shown = json.loads(vj("anomaly-models", "show", model_id, "--json").stdout)
    assert shown["name"] == "lawn"
    r = vj("anomaly-models", "set-thresholds", model_id, "--image", "0.125", "--json")
    changed = json.loads(r.stdout)["thresholds"]
    assert changed["image"] == 0.125 and changed["image_method"] == "manual"
    assert "image threshold 0.125 (manual)" in vj("anomaly-models", "show", model_id).stdout
    vj("anomaly-models", "set-thresholds", model_id, code=2)  # nothing to change
    assert vj("anomaly-models", "delete", model_id).stdout.strip() == f"deleted {model_id}"
    r = vj("anomaly-models", "show", model_id, code=3)
    assert "404" in r.stderr


def test_submit_subject_in_context_tune_reuse_and_manage(vj, tmp_path):
    from tests.api.test_subject_api import photos

    (tmp_path / "cat").mkdir()
    for i, im in enumerate(photos(3)):
        im.save(tmp_path / "cat" / f"{i}.png")
    r = vj("submit", "subject", tmp_path / "cat", "--class", "cat", "--prompt", "in a box", "--steps", "2",
           "--width", "64", "--height", "64", "--metric", "clip_t", "--wait", "--out", tmp_path / "ic", "--json")
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["result"]["method"] == "in_context"
    assert len(job["params"]["subject_images"]) == 3 and (tmp_path / "ic" / job["id"] / "output_0.png").is_file()
    tuned = json.loads(vj("submit", "subject-tune", *sorted((tmp_path / "cat").iterdir()), "--class", "cat",
                          "--steps", "2", "--rank", "2", "--prior-preservation", "1", "--class-image-steps", "1",
                          "--wait", "--json").stdout)
    assert tuned["status"] == "succeeded" and tuned["params"]["prior_preservation"]["class_images"] == 1
    model_id = tuned["result"]["subject_model"]
    again = json.loads(vj("submit", "subject", "--subject-model", model_id, "--prompt", "on a roof", "--steps", "2",
                          "--width", "64", "--height", "64", "--wait", "--json").stdout)
    assert again["status"] == "succeeded" and again["result"]["tuning"] == "skipped"
    assert model_id in vj("subject-models", "list").stdout
    assert json.loads(vj("subject-models", "show", model_id, "--json").stdout)["training"]["rank"] == 2
    assert vj("subject-models", "delete", model_id).stdout.strip() == f"deleted {model_id}"
    r = vj("subject-models", "show", model_id, code=3)
    assert "404" in r.stderr or "not found" in r.stderr.lower()
    r = vj("submit", "subject", "--subject-model", model_id, "--prompt", "x", "--tune-steps", "3", code=2)
    assert "tuning options" in r.stderr
    vj("submit", "subject", "--prompt", "x", code=2)  # neither photos nor a subject model
def test_submit_anomaly_fit_reverse_distillation_from_a_folder_dataset(vj, tmp_path):
    from tests.models.anomaly_data import make_benchmark

    bench = make_benchmark("grass", crop=64, n_train=6, n_validation=0, n_test_normal=0, n_test_per_defect=1, seed=1)
    for folder in ("normal", "abnormal", "mask"):
        (tmp_path / "ds" / folder).mkdir(parents=True)
    for i, im in enumerate(bench.train):
        im.save(tmp_path / "ds" / "normal" / f"{i}.png")
    for i, s in enumerate(bench.test):
        s.image.save(tmp_path / "ds" / "abnormal" / f"{i}.png")
        Image.fromarray(s.mask.astype("uint8") * 255).save(tmp_path / "ds" / "mask" / f"{i}.png")
    fit = json.loads(vj("submit", "anomaly-fit", "--archive", tmp_path / "ds", "--name", "grass", "--model",
                        "reverse_distillation", "--backbone", "tiny", "--image-size", "64", "--max-epochs", "2",
                        "--patience", "0", "--batch-size", "2", "--learning-rate", "0.01", "--seed", "3", "--wait",
                        "--json").stdout)
    assert fit["status"] == "succeeded", fit["error"]
    assert fit["params"]["learning_rate"] == 0.01 and fit["params"]["seed"] == 3
    training = fit["result"]["training"]
    assert [h["epoch"] for h in training["history"]] == [1, 2] and fit["result"]["counts"]["test_abnormal"] == 2


def test_submit_takes_a_url_input_the_service_fetches(vj, tmp_path):
    import functools
    import http.server
    import threading

    photo(40, 32).save(tmp_path / "remote.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/remote.png"
        job = json.loads(vj("submit", "colorize", url, "--steps", "1", "--wait", "--json").stdout)
    finally:
        httpd.shutdown()
    assert job["status"] == "succeeded" and job["params"]["image"].startswith("upl_")
