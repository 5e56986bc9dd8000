"""Colorization request validation: every mode's fields, limits named in 422 problems."""
from __future__ import annotations

import json

import numpy as np

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
    body = {"image": image_id, "prompt": "a red kite", "steps": 4,
            "strokes": [stroke([[10, 10], [50, 40]]), stroke([[100, 80]], "#00FF00")],
            "stroke_image": upload(client, rgba), "exemplar": upload(client, photo(30, 30)),
            "guidance": {"mode": "autoguidance", "scale": 2.0}, "sag_scale": 0.1, "sag_threshold": 500,
            "deformable_decoder": True, "num_outputs": 2, "output_format": "webp", "seed": 3}
    status, job = post(client, body)
    assert status == 202, job
    assert job["params"]["strokes"][1]["points"] == [[100, 80]] and job["params"]["guidance"]["mode"] == "autoguidance"
    status, job = post(client, {"image": image_id})
    assert job["params"]["guidance"] == {"mode": "cfg", "scale": 7.0} and job["params"]["sag_scale"] == 0.05
    assert job["params"]["auto_caption"] is True
    assert job["params"]["parity"] == {"sag_heads": "all", "working_size": "aspect", "timesteps": "leading",
                                       "gray_input": "lab", "l_merge": "gamut_fit"}


@pytest.mark.parametrize("guidance, scale", [({"mode": "autoguidance"}, 2.0), ({"mode": "cfg"}, 7.0), ({}, 7.0),
                                             ({"mode": "none"}, 1.0), ({"mode": "autoguidance", "scale": 2.5}, 2.5)])
def test_guidance_scale_defaults_per_mode_and_params_show_it(client, image_id, guidance, scale):
    # autoguidance without a scale used to reach the pipeline as CFG's 7.0 (Karras et al.: w ~ 2)
    status, job = post(client, {"image": image_id, "guidance": guidance})
    assert status == 202, job
    assert job["params"]["guidance"] == {"mode": guidance.get("mode", "cfg"), "scale": scale}


@pytest.mark.parametrize("mode", ["autoguidance", "none"])
def test_negative_prompt_without_cfg_is_refused_naming_it(client, image_id, mode):
    status, problem = post(client, {"image": image_id, "guidance": {"mode": mode}, "negative_prompt": "dull"})
    assert status == 422 and problem["errors"][0]["field"] == "negative_prompt", problem
    assert "no effect" in problem["detail"]
    status, job = post(client, {"image": image_id, "negative_prompt": "dull"})  # with CFG it is used
    assert status == 202 and job["params"]["negative_prompt"] == "dull"


def test_parity_presets_and_switches_are_expanded_on_params(client, image_id):
    status, job = post(client, {"image": image_id, "parity": "official", "auto_caption": False})
    assert status == 202, job
    assert job["params"]["parity"] == {"sag_heads": "official", "working_size": "official", "timesteps": "uniform", "gray_input": "official", "l_merge": "official"}
    assert job["params"]["auto_caption"] is False
    status, job = post(client, {"image": image_id, "parity": {"timesteps": "uniform"}})
    assert job["params"]["parity"] == {"sag_heads": "all", "working_size": "aspect", "timesteps": "uniform",
                                       "gray_input": "lab", "l_merge": "gamut_fit"}
    for bad in ("exact", {"sag_heads": "some"}, {"colour": "x"}):
        status, problem = post(client, {"image": image_id, "parity": bad})
        assert status == 422 and problem["errors"][0]["field"].startswith("parity"), problem


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


MODES = {
    "unconditional": {},
    "prompt": {"prompt": "a blue sky over green grass"},
    "strokes": {"strokes": [stroke([[10, 10], [60, 30]], "#ff0000", 8), stroke([[80, 60]], "#00ff00", 12)]},
    "stroke_image": {"stroke_image": "RASTER"},
    "exemplar": {"exemplar": "EXEMPLAR"},
    "prompt+strokes+exemplar": {"prompt": "a red coat", "strokes": [stroke([[20, 20], [40, 60]], "#aa2200", 6)],
                                "exemplar": "EXEMPLAR"},
    "all+autoguidance+deformable": {"prompt": "autumn", "strokes": [stroke([[5, 5], [90, 70]], "#ffaa00", 4)],
                                    "stroke_image": "RASTER", "exemplar": "EXEMPLAR", "deformable_decoder": True,
                                    "guidance": {"mode": "autoguidance", "scale": 2.0}},
    "no guidance, no SAG, jpeg": {"guidance": {"mode": "none", "scale": 1.0}, "sag_scale": 0, "output_format": "jpeg"},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_and_keeps_the_input_l_channel(live, mode):
    import io

    from tests.helpers import l_channel

    source = photo(100, 80)
    raster = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    raster.paste((0, 0, 255, 255), (60, 10, 90, 30))
    uploads = {"RASTER": upload(live, raster), "EXEMPLAR": upload(live, photo(48, 40))}
    body = {k: uploads.get(v, v) if isinstance(v, str) else v for k, v in MODES[mode].items()}
    status, job = post(live, {"image": upload(live, source), "steps": 3, "seed": 11, "num_outputs": 2, **body})
    assert status == 202, job
    deadline = __import__("time").monotonic() + 180
    while job["status"] not in ("succeeded", "failed", "canceled"):
        job = live.get(f"/v1/jobs/{job['id']}", params={"wait": 10}, headers=auth(ALICE)).json()
        assert __import__("time").monotonic() < deadline
    assert job["status"] == "succeeded", job["error"]
    assert len(job["result"]["images"]) == 2
    for item in job["result"]["images"]:
        out = Image.open(io.BytesIO(live.get(item["url"].removeprefix("http://testserver")).content))
        assert out.size == source.size
        tolerance = 2.0 if body.get("output_format") != "jpeg" else 3.0  # JPEG's own loss on top
        assert np.abs(l_channel(out) - l_channel(source)).mean() <= tolerance, mode
