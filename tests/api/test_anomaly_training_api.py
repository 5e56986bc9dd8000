"""Reverse Distillation through the API (tiny profile, in-process worker): a labelled ZIP of
skimage brick crops (normal/, abnormal/, mask/), training with early stopping, the per-epoch
validation AUROC on the job while it runs (GET and the SSE stream) and on the model, then
scoring a normal crop and the same crop with a pasted defect."""
from __future__ import annotations

import io
import json
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.api.test_anomaly_api import upload, zip_of
from tests.helpers import ALICE, auth, png_bytes, wait_final as wait
from tests.models.anomaly_data import make_benchmark, paste_defect

pytest.importorskip("torch")

SIZE = 64


@pytest.fixture(scope="module")
def crops():
    """16 normal crops, 8 defective ones with masks (brick, 64 px)."""
    return make_benchmark("brick", crop=SIZE, n_train=16, n_validation=0, n_test_normal=2, n_test_per_defect=2, seed=0)


def folder_zip(b) -> bytes:
    entries = {f"normal/{i:02d}.png": png_bytes(im) for i, im in enumerate(b.train)}
    for i, s in enumerate(x for x in b.test if x.defect):
        entries[f"abnormal/{i:02d}.png"] = png_bytes(s.image)
        entries[f"mask/{i:02d}_mask.png"] = png_bytes(Image.fromarray(s.mask.astype(np.uint8) * 255))
    return zip_of(entries)


def stream(client, job_id: str, frames: list[dict]) -> threading.Thread:
    """Collect the job's SSE frames in the background until the stream ends."""

    def run():
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "job":  # (log frames carry log lines)
                    frames.append(json.loads(line[6:]))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_train_reverse_distillation_with_early_stopping_then_score(live, crops):
    archive = upload(live, folder_zip(crops), name="bricks.zip")
    body = {"name": "bricks", "model": "reverse_distillation", "archive": archive, "backbone": "tiny",
            "image_size": SIZE, "seed": 0, "max_epochs": 6, "patience": 1, "batch_size": 4}
    r = live.post("/v1/anomaly-models", json=body, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["params"]["learning_rate"] == 0.005  # the effective request: defaults explicit
    frames: list[dict] = []
    sse = stream(live, job_id, frames)
    job = wait(live, job_id)
    sse.join(timeout=30)
    assert job["status"] == "succeeded", job["error"]

    training = job["result"]["training"]
    history = training["history"]
    # 16 normal crops: 13 train, 3 into the test set (no normal test images); validation takes half of each
    # label of it: 1 normal + 4 defective crops, so the validation image AUROC is one of 5 values and 6
    # strictly better epochs in a row cannot happen: patience 1 stops training early
    assert job["result"]["counts"] == {"train": 13, "validation_normal": 1, "validation_abnormal": 4,
                                       "test_normal": 2, "test_abnormal": 4}
    assert training["stopped_early"] and history[-1]["early_stop"] and len(history) <= 6
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert all(h["monitor"] == "image_auroc" and h["image_auroc"] is not None and h["image_f1"] is not None
               for h in history)
    best = max(history, key=lambda h: (h["image_auroc"], -h["epoch"]))
    assert training["best_epoch"] == best["epoch"] and training["attempt"] == 1
    assert training["resumed_from_epoch"] is None

    # the history grew epoch by epoch on the running job, in its event stream
    running = [f for f in frames if f["status"] == "running" and (f.get("result") or {}).get("training")]
    seen = [len(f["result"]["training"]["history"]) for f in running]
    assert seen == sorted(seen) and seen[0] < seen[-1] == len(history), seen  # (frames may coalesce epochs)
    assert all(f["result"]["training"]["history"] == history[:n] for f, n in zip(running, seen))
    assert any(re.fullmatch(r"epoch \d/6 step \d/4 loss \d\.\d{4}", f["stage"]) for f in frames), \
        [f["stage"] for f in frames]
    assert any(re.match(r"epoch \d/6: loss .*, val AUROC \d\.\d{3}, F1 \d\.\d{3}", f["stage"]) for f in frames)

    # the model: test metrics on the held-out split, training record, split record
    model = live.get(f"/v1/anomaly-models/{job['result']['model_id']}", headers=auth(ALICE)).json()
    assert model["model"] == "reverse_distillation" and model["coreset_ratio"] is None
    tm = model["test_metrics"]
    assert tm["images"] == 6 and tm["normal"] == 2 and tm["abnormal"] == 4
    assert all(tm[k] is not None for k in ("image_auroc", "image_f1", "pixel_auroc"))
    assert model["training"]["best_epoch"] == best["epoch"] and model["split"]["seed"] == 0
    assert model["training_config"] == {"max_epochs": 6, "patience": 1, "batch_size": 4, "learning_rate": 0.005,
                                        "seed": 0}

    # score a normal crop and the same crop with a pasted defect
    normal = crops.train[0]
    defective, truth = paste_defect(normal, (20, 20, 24, 24), seed=1)
    ids = [upload(live, png_bytes(im)) for im in (normal, defective)]
    r = live.post("/v1/anomaly-scores", json={"model_id": model["id"], "images": ids}, headers=auth(ALICE))
    scored = wait(live, r.json()["id"])
    assert scored["status"] == "succeeded", scored["error"]
    a, b = scored["result"]["items"]
    assert scored["result"]["model"] == "reverse_distillation"
    assert set(a) >= {"score", "normalized_score", "label", "boxes", "heat_map_url", "mask_url", "anomaly_map_url",
                      "segmentation_url"}

    def fetch(url):
        return np.asarray(Image.open(io.BytesIO(live.get(url.removeprefix("http://testserver")).content)))

    maps = [fetch(it["anomaly_map_url"]).astype(np.float64) for it in (a, b)]
    assert maps[1][truth].mean() > maps[0][truth].mean()  # the defect raises the map where it is
    assert b["score"] > a["score"]
    seg = fetch(b["segmentation_url"])
    assert seg.shape == (SIZE, SIZE, 3)

    # thresholds change without retraining: above every score, every label is normal
    patched = live.patch(f"/v1/anomaly-models/{model['id']}", json={"image_threshold": 2 * max(a["score"], b["score"])},
                         headers=auth(ALICE))
    assert patched.status_code == 200 and patched.json()["thresholds"]["image_method"] == "manual"
    again = wait(live, live.post("/v1/anomaly-scores", json={"model_id": model["id"], "images": ids},
                                 headers=auth(ALICE)).json()["id"])
    assert [it["label"] for it in again["result"]["items"]] == [False, False]
    assert [it["score"] for it in again["result"]["items"]] == [a["score"], b["score"]]  # the same model


@pytest.fixture
def small_work_client(tmp_path):
    from fastapi.testclient import TestClient

    from service.app import build_context, create_app
    from service.core.config import Settings
    from tests.helpers import KEYS

    settings = Settings(data_dir=tmp_path, api_keys=KEYS, max_train_image_epochs=50, max_job_pixels=7 * SIZE * SIZE,
                        redis_url=None, s3_bucket=None)
    with TestClient(create_app(build_context(settings), run_reaper=False)) as c:
        yield c


def problem_field(r) -> tuple[str, str]:
    assert r.status_code == 422, r.text
    return r.json()["errors"][0]["field"], r.json()["detail"]


def test_training_fields_are_checked_on_the_effective_request(small_work_client, crops):
    c = small_work_client
    ids = [upload(c, png_bytes(im)) for im in crops.train[:6]]
    base = {"name": "x", "images": ids, "backbone": "tiny", "image_size": SIZE}
    post = lambda **kw: c.post("/v1/anomaly-models", json={**base, **kw}, headers=auth(ALICE))  # noqa: E731
    # PatchCore is the default; its effective request has its settings only
    r = c.post("/v1/anomaly-models", json=base, headers=auth(ALICE))
    assert r.status_code == 202 and r.json()["params"]["model"] == "patchcore"
    assert r.json()["params"]["coreset_ratio"] == 0.1 and r.json()["params"]["max_epochs"] is None
    field, detail = problem_field(post(max_epochs=3, patience=1))  # a model-level check names its field
    assert field == "max_epochs" and "max_epochs: (also patience) not a setting of model patchcore" in detail
    rd = {"model": "reverse_distillation"}
    assert "coreset_ratio: not a setting" in problem_field(post(**rd, coreset_ratio=0.5))[1]
    r = post(**rd, max_epochs=1001)
    assert problem_field(r)[0] == "max_epochs" and r.json()["errors"][0]["limit"] == 1000
    assert post(**rd, batch_size=65).json()["errors"][0]["field"] == "batch_size"
    assert post(**rd, learning_rate=0.5).json()["errors"][0]["field"] == "learning_rate"
    assert post(**rd, patience=-1).json()["errors"][0]["field"] == "patience"
    assert "validation: the validation split" in problem_field(post(**rd, validation={"normal": ids[:1]}))[1]
    assert "abnormal_masks: 1 masks for 0" in problem_field(post(**rd, abnormal_masks=[None]))[1]
    # the training work: the default 200 epochs x 6 images is over this service's cap of 50
    field, detail = problem_field(post(**rd))
    assert field == "max_epochs" and "200 epochs x 6 normal images = 1200" in detail
    assert post(**rd).json()["errors"][0]["limit"] == 50
    r = post(**rd, max_epochs=8)
    assert r.status_code == 202, r.text
    assert {k: r.json()["params"][k] for k in ("max_epochs", "patience", "batch_size", "learning_rate")} == \
        {"max_epochs": 8, "patience": 3, "batch_size": 16, "learning_rate": 0.005}
    assert problem_field(post(**rd, max_epochs=8, abnormal=["upl_" + "0" * 24]))[0] == "abnormal.0"
    # abnormal images and masks count against the job's pixel budget (7 images of 64 x 64 here)
    extra = [upload(c, png_bytes(im)) for im in crops.train[6:8]]
    assert post(**rd, max_epochs=8, abnormal=extra[:1]).status_code == 202
    r = post(**rd, max_epochs=8, abnormal=extra[:1], abnormal_masks=extra[1:])
    assert problem_field(r)[0] == "images" and "VISIONJOBS_MAX_JOB_PIXELS" in r.json()["detail"]


def test_labelled_archives_are_checked_at_submission(client, crops):
    good = png_bytes(crops.train[0])
    stray = upload(client, zip_of({"normal/a.png": good, "abnormal/b.png": good, "other/c.png": good}), name="x.zip")
    r = client.post("/v1/anomaly-models", json={"name": "x", "archive": stray}, headers=auth(ALICE))
    assert problem_field(r)[0] == "archive" and "'other/c.png' is not under normal/" in r.json()["detail"]
    no_normal = upload(client, zip_of({"abnormal/b.png": good}), name="y.zip")
    r = client.post("/v1/anomaly-models", json={"name": "x", "archive": no_normal}, headers=auth(ALICE))
    assert problem_field(r)[0] == "archive" and "no images under normal/" in r.json()["detail"]
    labelled = upload(client, zip_of({"data/normal/a.png": good, "data/abnormal/b.png": good}), name="z.zip")
    r = client.post("/v1/anomaly-models", json={"name": "x", "archive": labelled, "validation": {"normal": []}},
                    headers=auth(ALICE))
    assert problem_field(r)[0] == "validation"


def test_archive_folders_are_read_as_the_worker_reads_them():
    from models.anomaly.folder import _FOLDERS, group_folder_entries, is_folder_layout
    from service.archives import FOLDERS, folder_counts

    assert FOLDERS == _FOLDERS
    for names in (["a.png", "b.png"], ["top/a.png"], ["ds/normal/a.png", "ds/abnormal/b.png", "ds/mask/b_mask.png"],
                  ["good/a.png", "abnormal/x/b.png", "ground_truth/x/b.png"]):
        counts = folder_counts(names)
        if is_folder_layout(names):
            e = group_folder_entries(names)
            assert counts == {"normal": len(e.normal), "abnormal": len(e.abnormal),
                              "mask": sum(m is not None for m in e.abnormal_masks)}
        else:
            assert counts == {"normal": len(names), "abnormal": 0, "mask": 0}


def test_cancel_stops_training_and_drops_the_checkpoint(live, crops):
    from worker.jobs.anomaly_train import checkpoint_key

    ids = [upload(live, png_bytes(im)) for im in crops.train[:8]]
    r = live.post("/v1/anomaly-models", json={"name": "x", "model": "reverse_distillation", "images": ids,
                                              "backbone": "tiny", "image_size": SIZE, "seed": 0, "max_epochs": 500,
                                              "patience": 0, "batch_size": 2}, headers=auth(ALICE))
    job_id = r.json()["id"]
    objects = live.runner.objects
    deadline = time.monotonic() + 120
    while not objects.exists(checkpoint_key(job_id)):  # an epoch is done and saved
        assert time.monotonic() < deadline
        time.sleep(0.05)
    live.post(f"/v1/jobs/{job_id}/cancel", headers=auth(ALICE))
    job = wait(live, job_id)
    assert job["status"] == "canceled", job
    shown = job["result"]["training"]  # the partial training record stays on the canceled job
    assert 1 <= shown["epoch"] < 50 and len(shown["history"]) == shown["epoch"]  # stopped long before the end
    assert not objects.exists(checkpoint_key(job_id))


def test_checkpoint_budget_refuses_the_training_before_it_starts(live, crops):
    ids = [upload(live, png_bytes(im)) for im in crops.train[:4]]
    live.runner.settings.max_checkpoint_bytes = 1_000_000  # the tiny student's checkpoint takes ~16 MB
    r = live.post("/v1/anomaly-models", json={"name": "x", "model": "reverse_distillation", "images": ids,
                                              "backbone": "tiny", "image_size": SIZE, "max_epochs": 2},
                  headers=auth(ALICE))
    job = wait(live, r.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job
    assert "VISIONJOBS_MAX_CHECKPOINT_BYTES" in job["error"]["message"] and job["result"] is None
