"""Colorization request validation: every mode's fields, limits named in 422 problems."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.helpers import ALICE, auth, photo, png_bytes


def upload(client, img) -> str:
    r = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(img), "image/png")}, headers=auth(ALICE))
    return r.json()["id"]


@pytest.fixture
def image_id(client):
    return upload(client, photo(100, 80))


def post(client, body) -> tuple[int, dict]:
    r = client.post("/v1/colorizations", content=json.dumps(body), headers={**auth(ALICE), "Content-Type": "application/json"})
    return r.status_code, r.json()


def stroke(points, color="#ff0000", width=6):
    return {"color": color, "width": width, "points": points}


def test_full_request_is_accepted_and_stored(client, image_id):
    rgba = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    body = {"image": image_id, "prompt": "a red kite", "negative_prompt": "dull", "steps": 4,
            "strokes": [stroke([[10, 10], [50, 40]]), stroke([[100, 80]], "#00FF00")],
            "stroke_image": upload(client, rgba), "exemplar": upload(client, photo(30, 30)),
            "guidance": {"mode": "autoguidance", "scale": 2.0}, "sag_scale": 0.1, "sag_threshold": 500,
            "deformable_decoder": True, "num_outputs": 2, "output_format": "webp", "seed": 3}
    status, job = post(client, body)
    assert status == 202, job
    assert job["params"]["strokes"][1]["points"] == [[100, 80]] and job["params"]["guidance"]["mode"] == "autoguidance"
    status, job = post(client, {"image": image_id})
    assert job["params"]["guidance"] == {"mode": "cfg", "scale": 7.0} and job["params"]["sag_scale"] == 0.05


@pytest.mark.parametrize("extra,field", [
    ({"strokes": [stroke([[101, 10]])]}, "strokes.0.points.0"),
    ({"strokes": [stroke([[1, 1]]), stroke([[5, -1]])]}, "strokes.1.points.0"),
    ({"strokes": [stroke([[1, 1]], color="red")]}, "strokes.0.color"),
    ({"strokes": [stroke([[1, 1]], width=0)]}, "strokes.0.width"),
    ({"strokes": [stroke([])]}, "strokes.0.points"),
    ({"strokes": [stroke([[1, 1]])] * 257}, "strokes"),
    ({"strokes": [stroke([[1, 1]] * 4000)] * 6}, "strokes"),
    ({"guidance": {"mode": "magic"}}, "guidance.mode"),
    ({"guidance": {"scale": 31}}, "guidance.scale"),
    ({"sag_scale": float("nan")}, "sag_scale"),
    ({"sag_threshold": 1e9}, "sag_threshold"),
    ({"output_format": "bmp"}, "output_format"),
    ({"exemplar": "upl_" + "1" * 24}, "exemplar"),
    ({"stroke_image": "not-an-id"}, "stroke_image"),
])
def test_invalid_colorization_fields_are_named(client, image_id, extra, field):
    status, problem = post(client, {"image": image_id, **extra})
    assert status == 422, problem
    assert problem["errors"][0]["field"] == field, problem


def test_stroke_image_must_match_the_image_size(client, image_id):
    wrong = upload(client, Image.new("RGBA", (50, 50)))
    status, problem = post(client, {"image": image_id, "stroke_image": wrong})
    assert status == 422 and problem["errors"][0]["field"] == "stroke_image" and "100x80" in problem["detail"]


def test_exemplar_refused_when_no_live_worker_can_use_one(client, ctx, image_id):
    exemplar = upload(client, photo(30, 30))
    ctx.store.put_capabilities("colorize", "w1", {"profile": "pretrained", "exemplar": False,
                                                  "exemplar_missing": "controlcolor/image_encoder/config.json"})
    status, problem = post(client, {"image": image_id, "exemplar": exemplar})
    assert status == 422 and problem["errors"][0]["field"] == "exemplar"
    assert "controlcolor/image_encoder/config.json" in problem["detail"]
    ctx.store.put_capabilities("colorize", "w2", {"profile": "tiny", "exemplar": True})
    assert post(client, {"image": image_id, "exemplar": exemplar})[0] == 202


def test_optional_features_refused_when_no_live_worker_has_their_weights(client, ctx, image_id):
    ctx.store.put_capabilities("colorize", "w1", {"profile": "pretrained", "deformable_decoder": False,
                                                  "deformable_decoder_missing": "controlcolor/vae_deformable",
                                                  "autoguidance": False,
                                                  "autoguidance_missing": "VISIONJOBS_AUTOGUIDANCE_DIR (unset)"})
    status, problem = post(client, {"image": image_id, "deformable_decoder": True})
    assert status == 422 and problem["errors"][0]["field"] == "deformable_decoder"
    status, problem = post(client, {"image": image_id, "guidance": {"mode": "autoguidance", "scale": 2}})
    assert status == 422 and problem["errors"][0]["field"] == "guidance.mode" and "AUTOGUIDANCE" in problem["detail"]
    assert post(client, {"image": image_id})[0] == 202
