"""Limits on the effective request, headers that cannot crash, error bodies without internals.

- Every limit is checked on the request as it will run, defaults filled in: a video with only
  `height` is checked against the pixel limit with the default width (720), and only `width`
  with the default height (480).
- Last-Event-ID is ours only when it is 1-18 ASCII digits; anything else (superscripts and other
  Unicode digits that `str.isdigit()` accepts, thousands of digits) starts the stream over.
- 422s name request fields only: a union member's schema (`literal['project','official']`,
  `ColorizationParity`) never appears in `field` or `detail`.
- /readyz failures carry a fixed message per check; the exception (host, port, path) is logged.
- Anomaly thresholds are refused beyond +-1e30 (scores are float32: at 1e308 the normalised score
  is NaN, which JSON renders as null).
"""
from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.dispatch import LocalDispatcher
from tests.conftest import free_port
from tests.helpers import ALICE, KEYS, auth, parse_sse, photo, png_bytes

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    ctx = build_context(Settings(data_dir=tmp_path_factory.mktemp("limits"), api_keys=KEYS, redis_url=None,
                                 s3_bucket=None))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        client.ctx = ctx
        client.image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 48)), "image/png")},
                                   headers=auth(ALICE)).json()["id"]
        yield client


def assert_field(r, status: int, field: str):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["field"] == field, r.json()


# --- limits on the effective request --------------------------------------------------------

@pytest.mark.parametrize("size, field", [({"height": 1360}, "height"), ({"width": 1360}, "width"),
                                         ({"height": 1024}, "height"), ({"width": 768}, "width")])
def test_a_video_with_one_dimension_is_checked_with_the_default_of_the_other(api, size, field):
    r = api.post("/v1/video-generations", json={"prompts": ["a cat"], "steps": 2, **size}, headers=auth(ALICE))
    assert_field(r, 422, field)
    assert r.json()["errors"][0]["limit"] == api.ctx.settings.max_video_pixels


def test_a_video_at_the_default_size_is_accepted(api):
    r = api.post("/v1/video-generations", json={"prompts": ["a cat"], "steps": 2, "height": 480}, headers=auth(ALICE))
    assert r.status_code == 202, r.text


# --- Last-Event-ID ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def final_job(api):
    job = api.post("/v1/colorizations", json={"image": api.image}, headers=auth(ALICE)).json()["id"]
    api.post(f"/v1/jobs/{job}/cancel", headers=auth(ALICE))
    return job


@pytest.mark.parametrize("value", ["²", "¹²", "1" * 5000, "9" * 19, "١٢٣", "１２", "12 ", "+3", "0x10", "\u0663"])
def test_a_last_event_id_that_is_not_ours_starts_the_stream_over(api, final_job, value):
    try:  # HTTP headers are bytes; servers read them as Latin-1, where "²" is one byte
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode()
    r = api.get(f"/v1/jobs/{final_job}/events", headers={**auth(ALICE), "Last-Event-ID": raw})
    assert r.status_code == 200, r.text
    events = [e for e in parse_sse(r.text) if e.get("event") == "job"]
    assert events and '"canceled"' in events[-1]["data"]  # the current state, not "nothing new"


def test_a_last_event_id_of_ours_resumes(api, final_job):
    r = api.get(f"/v1/jobs/{final_job}/events", headers={**auth(ALICE), "Last-Event-ID": "0"})
    assert r.status_code == 200 and [e for e in parse_sse(r.text) if e.get("event") == "job"]


# --- 422 bodies name fields, not Python types ------------------------------------------------

@pytest.mark.parametrize("parity, field", [("weird", "parity"), (3, "parity"), ({"x": 1}, "parity.x"),
                                           ({"sag_heads": "x"}, "parity.sag_heads")])
def test_a_union_field_error_names_the_field_only(api, parity, field):
    r = api.post("/v1/colorizations", json={"image": api.image, "parity": parity}, headers=auth(ALICE))
    assert r.status_code == 422
    fields = [e["field"] for e in r.json()["errors"]]
    assert field in fields, fields
    for needle in ("literal[", "ColorizationParity", "function-", "0x", "<"):
        assert needle not in r.text, needle


# --- /readyz tells nothing internal --------------------------------------------------------

def test_readyz_with_redis_down_names_no_host_or_port(tmp_path):
    port = free_port()  # nothing listens there
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=f"redis://127.0.0.1:{port}/0",
                                 s3_bucket=None, signing_secret="s" * 32), dispatcher=LocalDispatcher())
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert str(port) not in r.text and "127.0.0.1" not in r.text and "Errno" not in r.text


def test_readyz_with_storage_gone_names_no_path(tmp_path):
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        shutil.rmtree(ctx.objects.root)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert str(tmp_path) not in r.text and "objects" not in r.text


# --- anomaly thresholds at float extremes --------------------------------------------------

@pytest.mark.parametrize("body, field", [({"image_threshold": 1e308}, "image_threshold"),
                                         ({"image_threshold": -1e308}, "image_threshold"),
                                         ({"pixel_threshold": 3.5e38}, "pixel_threshold"),
                                         ({"pixel_threshold": -1e31}, "pixel_threshold")])
def test_a_threshold_beyond_float32_is_refused(api, body, field):
    model_id = "anm_" + "5" * 24
    api.ctx.store.put_resource("anomaly_model", model_id, "alice", {
        "name": "m", "backbone": "wide_resnet50_2", "image_size": 64, "thresholds": {"image": 1.0, "pixel": 1.0},
        "counts": {"normal": 1}, "job_id": "job_" + "0" * 24, "created_at": 1.0, "prefix": "anomaly/x/", "files": []})
    r = api.patch(f"/v1/anomaly-models/{model_id}", json=body, headers=auth(ALICE))
    assert_field(r, 422, field)
    assert api.ctx.store.get_resource("anomaly_model", model_id)["thresholds"] == {"image": 1.0, "pixel": 1.0}


def test_thresholds_within_the_limit_give_finite_normalised_scores():
    import math

    from models.anomaly.postprocess import normalize

    for threshold in (1e30, -1e30, 5e-324, -5e-324):
        for vmin, vmax in ((0.0, 10.0), (1.0, 1.0)):
            assert math.isfinite(normalize(3.0, threshold, vmin, vmax)), (threshold, vmin, vmax)
