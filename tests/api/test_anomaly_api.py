"""Anomaly fit and scoring through the API (tiny backbone, in-process worker)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.helpers import wait_final as wait, ALICE, BOB, auth, png_bytes
from tests.models.anomaly_data import make_benchmark, paste_defect


def upload(client, data: bytes, name="a.png", key=ALICE) -> str:
    r = client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]




@pytest.fixture(scope="module")
def bench():
    return make_benchmark("brick", crop=128, n_train=12, n_validation=16, n_test_normal=6, n_test_per_defect=2, seed=0)


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_fit_score_patch_delete(live, bench):
    train = [upload(live, png_bytes(im)) for im in bench.train]
    val = {"normal": [upload(live, png_bytes(s.image)) for s in bench.validation if s.defect is None],
           "abnormal": [upload(live, png_bytes(s.image)) for s in bench.validation if s.defect]}
    r = live.post("/v1/anomaly-models", json={"name": "brick", "images": train, "validation": val, "backbone": "tiny",
                                              "image_size": 128, "seed": 0}, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    job = wait(live, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    model_id = job["result"]["model_id"]
    assert job["result"]["counts"]["train"] == 12 and job["result"]["thresholds"]["image_method"] == "f1"

    normals = [s.image for s in bench.test if s.defect is None][:3]
    defective, truth = paste_defect(normals[0], (44, 60, 30, 30), seed=0)
    ids = [upload(live, png_bytes(im)) for im in [*normals, defective]]
    r = live.post("/v1/anomaly-scores", json={"model_id": model_id, "images": ids}, headers=auth(ALICE))
    scored = wait(live, r.json()["id"])
    assert scored["status"] == "succeeded", scored["error"]
    items = scored["result"]["items"]
    assert [it["image"] for it in items] == ids
    assert [it["label"] for it in items] == [False, False, False, True]
    box = items[-1]["boxes"][0]
    assert box["x"] <= 59 <= box["x"] + box["w"] and box["y"] <= 75 <= box["y"] + box["h"]  # covers the patch centre
    heat = Image.open(io.BytesIO(live.get(items[-1]["heat_map_url"].removeprefix("http://testserver")).content))
    mask = np.asarray(Image.open(io.BytesIO(live.get(items[-1]["mask_url"].removeprefix("http://testserver")).content)))
    assert heat.size == (128, 128) and mask.shape == (128, 128) and mask[truth].mean() > mask[~truth].mean()
    amap = Image.open(io.BytesIO(live.get(items[-1]["anomaly_map_url"].removeprefix("http://testserver")).content))
    assert amap.mode.startswith("I")  # 16-bit

    # raise the image threshold above every score: no refit, every label flips to normal
    top = max(it["score"] for it in items)
    patched = live.patch(f"/v1/anomaly-models/{model_id}", json={"image_threshold": top * 2}, headers=auth(ALICE))
    assert patched.status_code == 200 and patched.json()["thresholds"]["image_method"] == "manual"
    again = wait(live, live.post("/v1/anomaly-scores", json={"model_id": model_id, "images": ids[-1:]},
                                 headers=auth(ALICE)).json()["id"])
    assert again["result"]["items"][0]["label"] is False

    listed = live.get("/v1/anomaly-models", headers=auth(ALICE)).json()["items"]
    assert [m["id"] for m in listed] == [model_id]
    assert live.get(f"/v1/anomaly-models/{model_id}", headers=auth(BOB)).status_code == 404
    r = live.post("/v1/anomaly-scores", json={"model_id": model_id, "images": ids[:1]}, headers=auth(BOB))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "model_id"
    # the model's files count against the artifact quota until it is deleted
    from service.store.base import ARTIFACTS

    ctx = live.app.state.ctx
    doc = ctx.store.get_resource("anomaly_model", model_id)
    stored = sum(len(ctx.objects.get(doc["prefix"] + name)) for name in doc["files"])
    assert ctx.store.bytes_used("alice", ARTIFACTS) == stored > 0
    assert live.delete(f"/v1/anomaly-models/{model_id}", headers=auth(ALICE)).status_code == 204
    assert live.get(f"/v1/anomaly-models/{model_id}", headers=auth(ALICE)).status_code == 404
    assert ctx.store.bytes_used("alice", ARTIFACTS) == 0


def test_fit_from_a_zip_archive(live, bench):
    archive = upload(live, zip_of({f"normal/{i}.png": png_bytes(im) for i, im in enumerate(bench.train[:6])}),
                     name="train.zip")
    r = live.post("/v1/anomaly-models", json={"name": "zip", "archive": archive, "backbone": "tiny", "image_size": 64},
                  headers=auth(ALICE))
    job = wait(live, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["counts"]["train"] == 6


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (40 * 1024 * 1024))  # 40 MiB of zeros -> ~40 KiB
    return buf.getvalue()


@pytest.mark.parametrize("entries,needle", [
    ({"a.png": None, "notes.txt": b"hello"}, "not an image"),
    ({}, "no images"),
    (None, "beyond the limits"),
])
def test_bad_archives_are_refused_before_any_job(client, bench, entries, needle):
    if entries is None:
        data = _bomb()
    else:
        data = zip_of({k: (v if v is not None else png_bytes(bench.train[0])) for k, v in entries.items()})
    archive = upload(client, data, name="x.zip")
    r = client.post("/v1/anomaly-models", json={"name": "x", "archive": archive}, headers=auth(ALICE))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "archive" and needle in r.json()["detail"]


def test_mismatched_sizes_and_empty_sets(client, bench):
    a = upload(client, png_bytes(bench.train[0]))
    b = upload(client, png_bytes(bench.train[1].resize((100, 100))))
    r = client.post("/v1/anomaly-models", json={"name": "x", "images": [a, b]}, headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "images.1"
    r = client.post("/v1/anomaly-models", json={"name": "x", "images": []}, headers=auth(ALICE))
    assert r.status_code == 422
    r = client.post("/v1/anomaly-scores", json={"model_id": "anm_" + "0" * 24, "images": [a]}, headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "model_id"
