"""Decode work is bounded (issue 14): every input has a work budget checked from its bytes before
decoding and enforced while it runs.

- Uploads whose decoding would cost far more than their size (repeated JPEG scans, padded
  chunks/segments/blocks, animations with many frames, frames x canvas) are refused with 422
  problem+json naming `file` and the limit, without being decoded.
- Submissions whose images add up to more pixels than the job budget (archives included,
  counted from the entries' headers) are refused before any job exists.
- Concurrent decodes are bounded per tenant (429) and per process (503), both naming the limit.
- The worker checks again before it decodes (inputs that slipped past, archive entries only
  seen by their header, video frames x pixels), and the job time limit covers decoding: a job
  stuck in one long decode is failed with `timeout` at limit + grace by the watchdog, once.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.store.base import UploadRecord, new_id
from tests.helpers import ALICE, BOB, KEYS, auth, photo, png_bytes, wait_final
from tests.security import budget_data as B
from tests.security import hostile_data as H

PROBLEM = "application/problem+json"
BUDGET = dict(max_upload_bytes=2_000_000, max_image_pixels=1_000_000, max_job_pixels=2_500_000, max_image_frames=100,
              max_frame_pixels=10_000_000, max_image_scans=32, max_image_chunks=2000, max_decodes=2,
              max_tenant_decodes=1, decode_wait_s=0.3)


def settings(tmp, **overrides) -> Settings:
    return Settings(data_dir=tmp, api_keys=KEYS, redis_url=None, s3_bucket=None, **{**BUDGET, **overrides})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    ctx = build_context(settings(tmp_path_factory.mktemp("budget-api")))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        client.ctx = ctx
        yield client


def upload(client, data: bytes, key: str = ALICE):
    return client.post("/v1/uploads", files={"file": ("f.bin", data, "application/octet-stream")}, headers=auth(key))


def assert_problem(r, status: int, field: str, limit) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["errors"][0]["field"] == field, body
    assert body["errors"][0].get("limit") == limit, body
    assert "VISIONJOBS_" in body["detail"], body  # names the setting that holds the limit
    return body


# --- uploads: refused from their structure ------------------------------------------------------

UPLOADS = {
    "jpeg/progressive-200-repeated-scans": (lambda: B.progressive_jpeg_repeated_scans(1000, 200), "max_image_scans"),
    "jpeg/progressive-40-scans-tiny-image": (lambda: B.progressive_jpeg_repeated_scans(64, 30), "max_image_scans"),
    "jpeg/5000-comment-segments-before-sof": (lambda: B.jpeg_padded(5000), "max_image_chunks"),
    "jpeg/5000-app15-segments-after-sof": (lambda: B.jpeg_padded(5000, 0xEF, after_sof=True), "max_image_chunks"),
    "jpeg/1-mb-of-fill-bytes": (lambda: B.jpeg_fill_bytes(1_000_000), "max_image_chunks"),
    "png/5000-empty-chunks-before-idat": (lambda: B.png_padded(5000), "max_image_chunks"),
    "png/5000-text-chunks-after-idat": (lambda: B.png_padded(5000, b"tEXt", where="after"), "max_image_chunks"),
    "png/5000-zero-length-idats": (lambda: B.png_empty_idats(5000), "max_image_chunks"),
    "gif/101-frames": (lambda: B.gif_frames(101), "max_image_frames"),
    "gif/11-frames-on-a-1000x1000-canvas": (lambda: B.gif_frames(11, 1000, 1000), "max_frame_pixels"),
    "gif/5000-one-byte-sub-blocks": (lambda: B.gif_short_sub_blocks(5000), "max_image_chunks"),
    "gif/1-mb-of-junk-before-the-frame": (lambda: B.gif_junk_before_the_frame(1_000_000), None),
    "apng/101-frames": (lambda: B.apng_frames(101), "max_image_frames"),
    "webp/101-animation-frames": (lambda: B.webp_frames(101), "max_image_frames"),
    "tiff/101-pages": (lambda: B.tiff_pages(101), "max_image_frames"),
    "tiff/5000-strips": (lambda: B.tiff_strips(5000), "max_image_chunks"),
}


@pytest.mark.parametrize("name", sorted(UPLOADS))
def test_upload_beyond_its_decode_budget_is_refused_without_decoding(api, name):
    build, setting = UPLOADS[name]
    data = build()
    r = upload(api, data)
    if setting is None:  # a structure no encoder writes: not readable, no budget to name
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "file", r.text
        return
    body = assert_problem(r, 422, "file", BUDGET[setting])
    assert f"VISIONJOBS_{setting.upper()}" in body["detail"]


def test_the_issues_progressive_jpeg_is_refused_at_the_default_budget(tmp_path):
    """The reported file: 4096x4096, one 33-byte refinement scan repeated 1000 times (132 KB;
    PIL spends 12 s of CPU decoding it even at 1/8 scale)."""
    data = B.progressive_jpeg_repeated_scans(4096, 1000)
    assert len(data) < 140_000
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None))
    with TestClient(create_app(ctx, run_reaper=False)) as client:
        r = upload(client, data)
    assert_problem(r, 422, "file", Settings().max_image_scans)


def test_ordinary_images_stay_within_the_budget(api):
    """The budget refuses structure no encoder writes, not images: progressive JPEGs, animations
    within the frame limit, multi-page TIFFs, every format's usual output."""
    import io

    img = photo(96, 72)
    frames = [photo(48, 40).rotate(10 * i) for i in range(8)]
    cases = []
    for fmt, kw in (("JPEG", {"progressive": True}), ("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("TIFF", {}),
                    ("BMP", {}), ("GIF", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        cases.append(buf.getvalue())
    for fmt in ("GIF", "PNG", "WEBP", "TIFF"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
        cases.append(buf.getvalue())
    cases += [B.gif_frames(100), B.max_size_png(1000, 1000)]
    for data in cases:
        r = upload(api, data)
        assert r.status_code == 201, r.text


# --- submissions: the job's pixels, summed from headers -------------------------------------------

@pytest.fixture(scope="module")
def megapixel(api) -> list[str]:
    """Four uploads of exactly 1000x1000 (the per-image limit): three exceed the job budget."""
    ids = []
    for _ in range(4):
        r = upload(api, B.max_size_png(1000, 1000))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _model(api) -> str:
    model_id = "anm_" + "c" * 24
    now = time.time()
    api.ctx.store.put_resource("anomaly_model", model_id, "alice", {
        "name": "m", "backbone": "tiny", "image_size": 64, "coreset_ratio": 0.1,
        "thresholds": {"image": 1.0, "pixel": 1.0, "image_method": "quantile", "pixel_method": "quantile"},
        "counts": {"train": 2}, "prefix": f"anomaly/alice/{model_id}/", "files": [], "job_id": "job_" + "0" * 24,
        "profile": "tiny", "created_at": now, "updated_at": now})
    return model_id


def _archive(api, data: bytes) -> str:
    r = upload(api, data)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _jpeg_with_sof_beyond_the_head(size: int) -> bytes:
    """A JPEG whose frame header comes after 192 KB of comment segments (an archive check that
    stopped at the first 64 KB would not find its size)."""
    data = H.jpeg_bytes(photo(64, 64).resize((size, size)))
    return data[:2] + (b"\xff\xfe\xff\xff" + b"c" * 65533) * 3 + data[2:]


SUBMISSIONS = {
    "fit/three-megapixel-images": (lambda api, ids: dict(
        url="/v1/anomaly-models", json={"name": "m", "images": ids[:3]}), "images"),
    "fit/two-images-plus-one-validation-image": (lambda api, ids: dict(
        url="/v1/anomaly-models", json={"name": "m", "images": ids[:2], "validation": {"normal": [ids[2]]}}), "images"),
    "fit/archive-of-three-megapixel-entries": (lambda api, ids: dict(
        url="/v1/anomaly-models", json={"name": "m", "archive": _archive(api, B.zip_repeated(
            B.max_size_png(1000, 1000), 3))}), "archive"),
    "fit/archive-of-jpegs-whose-header-is-192kb-in": (lambda api, ids: dict(
        url="/v1/anomaly-models", json={"name": "m", "archive": _archive(api, B.zip_repeated(
            _jpeg_with_sof_beyond_the_head(1000), 3, "jpg"))}), "archive"),
    "fit/archive-plus-validation-images": (lambda api, ids: dict(
        url="/v1/anomaly-models", json={"name": "m", "archive": _archive(api, B.zip_repeated(
            B.max_size_png(1000, 1000), 2)), "validation": {"normal": [ids[0]]}}), "archive"),
    "score/three-megapixel-images": (lambda api, ids: dict(
        url="/v1/anomaly-scores", json={"model_id": _model(api), "images": ids[:3]}), "images"),
    "colorize/image-stroke-image-and-exemplar": (lambda api, ids: dict(
        url="/v1/colorizations", json={"image": ids[0], "stroke_image": ids[1], "exemplar": ids[2]}), "image"),
}


@pytest.mark.parametrize("name", sorted(SUBMISSIONS))
def test_submission_beyond_the_job_pixel_budget_is_refused_before_a_job_exists(api, megapixel, name):
    build, field = SUBMISSIONS[name]
    before = api.get("/v1/jobs", headers=auth(ALICE)).json()["items"]
    r = api.post(**build(api, megapixel), headers=auth(ALICE))
    assert_problem(r, 422, field, BUDGET["max_job_pixels"])
    assert api.get("/v1/jobs", headers=auth(ALICE)).json()["items"] == before


def test_a_1000_entry_archive_of_max_size_images_is_refused_at_submission(tmp_path):
    """The reported archive: 1000 solid 4096x4096 PNGs (16.7 GP in all; 1000 full-size decodes
    would need ~66 GB) in a ~0.5 MB ZIP that passes every archive limit. Refused at submission,
    at the default budget, from the entries' headers (the check stops at the 65th entry)."""
    data = B.zip_repeated(B.max_size_png(4096, 4096), 1000)
    assert len(data) < 2_000_000
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None))
    with TestClient(create_app(ctx, run_reaper=False)) as client:
        archive = upload(client, data)
        assert archive.status_code == 201, archive.text
        r = client.post("/v1/anomaly-models", json={"name": "m", "archive": archive.json()["id"]}, headers=auth(ALICE))
        assert_problem(r, 422, "archive", Settings().max_job_pixels)
        assert "VISIONJOBS_MAX_JOB_PIXELS" in r.json()["detail"]
        assert client.get("/v1/jobs", headers=auth(ALICE)).json()["items"] == []


# --- concurrent decodes ----------------------------------------------------------------------------

def test_a_tenant_at_its_decode_cap_gets_429_and_another_tenant_is_served(api):
    from service.uploads import decode_gate

    gate = decode_gate(api.ctx.settings)
    with gate.hold("alice", 1.0):  # alice's one decode slot is busy
        r = upload(api, png_bytes(photo(64, 64)))
        other = upload(api, png_bytes(photo(64, 64)), key=BOB)
    body = assert_problem(r, 429, "file", BUDGET["max_tenant_decodes"])
    assert "VISIONJOBS_MAX_TENANT_DECODES" in body["detail"] and r.headers["retry-after"]
    assert other.status_code == 201, other.text
    assert gate.in_use() == 0


def test_a_process_at_its_decode_cap_answers_503(api):
    from service.uploads import decode_gate

    gate = decode_gate(api.ctx.settings)
    with gate.hold("t1", 1.0), gate.hold("t2", 1.0):  # both process slots busy
        r = upload(api, png_bytes(photo(64, 64)))
    body = assert_problem(r, 503, "file", BUDGET["max_decodes"])
    assert "VISIONJOBS_MAX_DECODES" in body["detail"] and r.headers["retry-after"]
    assert upload(api, png_bytes(photo(64, 64))).status_code == 201


@pytest.mark.parametrize("keys,cap", [((ALICE,), "max_tenant_decodes"), ((ALICE, BOB), "max_decodes")])
def test_parallel_uploads_never_decode_more_than_the_caps(api, monkeypatch, keys, cap):
    """Twelve uploads at once (one tenant, or two): no more decodes run at any moment than the
    tenant cap (one tenant) or the process cap (two), counted inside the decoder."""
    import service.uploads as uploads

    state, lock = {"live": 0, "peak": 0}, threading.Lock()
    real = uploads.image_dimensions

    def counting(*args):
        with lock:
            state["live"] += 1
            state["peak"] = max(state["peak"], state["live"])
        try:
            time.sleep(0.05)
            return real(*args)
        finally:
            with lock:
                state["live"] -= 1

    monkeypatch.setattr(uploads, "image_dimensions", counting)
    data = png_bytes(photo(64, 64))
    results = []
    threads = [threading.Thread(target=lambda k=keys[i % len(keys)]: results.append(upload(api, data, key=k).status_code))
               for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert 1 <= state["peak"] <= BUDGET[cap], state
    assert set(results) <= {201, 429, 503} and 201 in results, results


# --- the worker: checks again before decoding, and the time limit covers decoding ----------------

def _direct_upload(ctx, tenant: str, data: bytes, width: int, height: int, ctype: str = "image/jpeg") -> str:
    """An upload that never went through POST /v1/uploads (made before the budget existed, or
    a budget lowered since): the worker must not trust it."""
    upload_id = new_id("upl")
    rec = UploadRecord(id=upload_id, tenant=tenant, filename="old.bin", content_type=ctype, size=len(data),
                       sha256="0" * 64, key=f"uploads/{tenant}/{upload_id}", width=width, height=height)
    ctx.objects.put(rec.key, data, ctype)
    ctx.store.put_upload(rec)
    return upload_id


def _worker(ctx, preload: tuple[str, ...] = (), **overrides):
    from service.kinds import KINDS
    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner

    ws = WorkerSettings(**{**ctx.settings.model_dump(), "model_profile": "tiny", "progress_interval_s": 0.05,
                           **overrides})
    runner = Runner(ws, ctx.store, ctx.objects, name="budget-worker")
    runner.preload(list(preload))
    stop = threading.Event()
    thread = threading.Thread(target=poll_loop, args=(runner, list(KINDS), stop, 0.05), daemon=True)
    thread.start()
    return stop, thread


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    ctx = build_context(settings(tmp_path_factory.mktemp("budget-live")))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        stop, thread = _worker(ctx)
        client.ctx = ctx
        yield client
        stop.set()
        thread.join(timeout=120)


def _failed_invalid(client, job_id: str, *needles: str) -> dict:
    job = wait_final(client, job_id, timeout=180)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job
    for needle in needles:
        assert needle in job["error"]["message"], job["error"]
    return job


def test_worker_refuses_a_hostile_upload_that_bypassed_the_upload_check(live):
    image = _direct_upload(live.ctx, "alice", B.progressive_jpeg_repeated_scans(256, 200), 256, 256)
    r = live.post("/v1/colorizations", json={"image": image, "steps": 1, "sag_scale": 0}, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    _failed_invalid(live, r.json()["id"], "image:", "VISIONJOBS_MAX_IMAGE_SCANS")


def test_worker_refuses_an_archive_entry_whose_body_is_hostile(live):
    """The submission check reads each entry's header; the scans come after it, so the worker
    counts them before decoding that entry."""
    ok = png_bytes(photo(64, 64))
    archive = H.zip_of({"a.png": ok, "b.png": ok, "c.jpg": B.progressive_jpeg_repeated_scans(64, 200)})
    archive_id = upload(live, archive).json()["id"]
    r = live.post("/v1/anomaly-models", json={"name": "m", "archive": archive_id, "image_size": 64},
                  headers=auth(ALICE))
    assert r.status_code == 202, r.text
    _failed_invalid(live, r.json()["id"], "archive", "c.jpg", "VISIONJOBS_MAX_IMAGE_SCANS")


def test_worker_refuses_a_video_whose_frames_x_pixels_exceed_the_budget(live):
    """160 frames of 256x256 = 10.5 MP to decode, over a 10 MP budget: refused after demuxing,
    before one frame is decoded."""
    video = H._mp4([np.zeros((256, 256, 3), np.uint8)] * 160, fps=16, size=256)
    video_id = upload(live, video).json()["id"]
    r = live.post("/v1/video-edits", json={"video": video_id, "source_prompt": "s", "edits": ["e"], "tune_steps": 1,
                                           "steps": 1}, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    _failed_invalid(live, r.json()["id"], "video:", "VISIONJOBS_MAX_FRAME_PIXELS")


def test_the_time_limit_covers_decoding_the_watchdog_ends_a_stuck_decode_once(tmp_path):
    """A worker that allows many scans (so the decode happens) and a 1 s limit: the job sits in
    libjpeg for seconds with no step callback to check the clock. The watchdog fails it with
    `timeout` at limit + grace; the in-process worker's thread is abandoned, writes nothing when
    the decode returns, and goes on to run the next job; the final state is written once."""
    ctx = build_context(settings(tmp_path, max_image_pixels=4096 * 4096, max_job_pixels=2**30))
    limit, grace = 2.0, 1.0
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        stop, thread = _worker(ctx, ("colorize",), max_image_scans=100_000, job_time_limit_s=limit,
                               job_kill_grace_s=grace)
        try:
            stuck = _direct_upload(ctx, "alice", B.progressive_jpeg_repeated_scans(4096, 500), 4096, 4096)
            r = client.post("/v1/colorizations", json={"image": stuck, "steps": 1, "sag_scale": 0}, headers=auth(ALICE))
            job_id = r.json()["id"]
            job = wait_final(client, job_id, timeout=120)
            assert job["status"] == "failed" and job["error"]["code"] == "timeout", job["error"]
            from datetime import datetime

            ran = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
            assert limit + grace <= ran < limit + grace + 2.0, ran  # the decode alone takes ~6 s of CPU
            version = ctx.store.get_job(job_id).version
            small = upload(client, png_bytes(photo(64, 64))).json()["id"]
            nxt = client.post("/v1/colorizations", json={"image": small, "steps": 1, "sag_scale": 0},
                              headers=auth(ALICE)).json()["id"]
            assert wait_final(client, nxt, timeout=120)["status"] == "succeeded"  # the stuck attempt is over
            after = ctx.store.get_job(job_id)
            assert after.version == version and after.error["code"] == "timeout" and after.result is None
            outputs = tmp_path / "objects" / "jobs" / job_id
            assert not outputs.exists() or not any(outputs.iterdir())
        finally:
            stop.set()
            thread.join(timeout=120)
