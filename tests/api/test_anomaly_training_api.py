"""Reverse Distillation through the API (tiny profile, in-process worker): a labelled ZIP of
skimage brick crops (normal/, abnormal/, mask/), training with early stopping, the per-epoch
validation AUROC on the job while it runs (GET and the SSE stream) and on the model, then
scoring a normal crop and the same crop with a pasted defect."""
from __future__ import annotations

import io
import json
import threading

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
            for line in r.iter_lines():
                if line.startswith("data: "):
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
    seen = sorted({len(f["result"]["training"]["history"]) for f in running})
    assert seen[-1] == len(history) and len(seen) >= len(history), seen
    assert any(f["stage"].startswith("epoch 1/6 step") and "loss" in f["stage"] for f in frames), \
        [f["stage"] for f in frames]
    assert any("val AUROC" in f["stage"] for f in frames)

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
