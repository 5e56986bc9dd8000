"""Hostile and broken input (issue 7): a corpus of requests that must each end in a 4xx
application/problem+json naming the offending field, never a 5xx; and unusual inputs that must
*work* (correctly) through a real job. Cases that reach a worker are followed by a tiny job that
must succeed: the worker survives them.

Decisions recorded here (and in the code they test):
- Animated images (GIF, APNG, WebP) are accepted as stills: every job uses the first frame
  (models/media.py `load_image`), the upload checks that frame, and colorize returns an image of
  the first frame's size whose L channel is the first frame's.
- Text fields (prompts, names) refuse C0 control characters other than tab, newline and carriage
  return with a 422 naming the field (service/schemas/common.py `no_control_chars`).
- Truncated or corrupt images are refused at upload (the first frame is decoded there), not left
  to fail a job later.
- EXIF orientation is applied everywhere: an upload reports its upright size, strokes are in
  upright coordinates, and outputs are upright.
- Videos are not decoded by the API (no FFmpeg in its image): a video without frames, a corrupt
  one, or one over the decoder's frame or duration limit
  (models/video/tuneavideo/clip.py MAX_SOURCE_FRAMES, MAX_DURATION_S) fails its job with
  `invalid_input` and a message starting `video:`.
"""
from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from service.app import build_context, create_app
from service.core.config import Settings
from tests.helpers import ALICE, BOB, KEYS, auth, l_channel, photo, png_bytes
from tests.security import hostile_data as H

PROBLEM = "application/problem+json"
UPLOAD_LIMIT = 200_000
PIXEL_LIMIT = 1_000_000
JSON_LIMIT = 1024 * 1024  # the documented JSON body limit
NO_UPLOAD = "upl_" + "0" * 24
NO_JOB = "job_" + "0" * 24
NO_MODEL = "anm_" + "0" * 24
NO_TUNED = "tvm_" + "0" * 24


def make_settings(tmp) -> Settings:
    return Settings(data_dir=tmp, api_keys=KEYS, max_upload_bytes=UPLOAD_LIMIT, max_image_pixels=PIXEL_LIMIT,
                    redis_url=None, s3_bucket=None)


# --- fixtures: one app without a worker (jobs stay queued), one with an in-process worker --------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    ctx = build_context(make_settings(tmp_path_factory.mktemp("hostile-api")))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        client.ctx = ctx
        yield client


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The embedded arrangement (API + in-process worker on one store), tiny models; the same
    set-up as tests/api/conftest.py `live`, kept for the whole module so models load once."""
    from service.kinds import KINDS
    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner

    ctx = build_context(make_settings(tmp_path_factory.mktemp("hostile-live")))
    with TestClient(create_app(ctx, run_reaper=False), raise_server_exceptions=False) as client:
        settings = WorkerSettings(**{**ctx.settings.model_dump(), "model_profile": "tiny", "progress_interval_s": 0.05})
        runner = Runner(settings, ctx.store, ctx.objects, name="hostile-live")
        stop = threading.Event()
        thread = threading.Thread(target=poll_loop, args=(runner, list(KINDS), stop, 0.05), daemon=True)
        thread.start()
        client.ctx, client.thread = ctx, thread
        client.probe_image = upload(client, png_bytes(photo(64, 48)))
        yield client
        stop.set()
        thread.join(timeout=60)


def upload(client, data: bytes, key: str = ALICE, name: str = "input.bin") -> str:
    r = client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]


@dataclass
class World:
    """Resources of two tenants in the worker-less app."""

    img: str  # alice: a 96x72 photo
    bob_img: str
    video: str  # alice: an MP4
    bob_video: str
    archive: str  # alice: a ZIP of two images
    bob_archive: str
    job: str  # alice: a queued colorization
    model: str  # alice: an anomaly model (resource)
    tuned: str  # alice: a tuned video model (resource)
    file_url: str  # alice: a signed file URL (path + query)
    file_key: str
    uploads: dict = field(default_factory=dict)  # extra uploads by name


@pytest.fixture(scope="module")
def world(api) -> World:
    ctx = api.ctx
    img = upload(api, png_bytes(photo(96, 72)))
    archive = H.zip_of({"a.png": png_bytes(photo(64, 64)), "b.png": png_bytes(photo(64, 64))})
    job = api.post("/v1/colorizations", json={"image": img}, headers=auth(ALICE))
    assert job.status_code == 202, job.text
    model_id, tuned_id = "anm_" + "a" * 24, "tvm_" + "b" * 24
    now = time.time()
    ctx.store.put_resource("anomaly_model", model_id, "alice", {
        "name": "m", "backbone": "tiny", "image_size": 64, "coreset_ratio": 0.1,
        "thresholds": {"image": 1.0, "pixel": 1.0, "image_method": "quantile", "pixel_method": "quantile"},
        "counts": {"train": 2}, "prefix": f"anomaly/alice/{model_id}/", "files": [], "job_id": job.json()["id"],
        "profile": "tiny", "created_at": now, "updated_at": now})
    ctx.store.put_resource("tuned_video_model", tuned_id, "alice", {
        "prefix": f"tuned/alice/{tuned_id}/", "base_model_id": "tiny", "source_prompt": "s", "clip": {},
        "job_id": job.json()["id"], "tune_steps": 1, "created_at": now})
    key = "jobs/job_hostile/output_0.png"
    ctx.objects.put(key, png_bytes(photo(8, 8)), "image/png")
    url = ctx.objects.signed_url(key, tenant="alice", base_url="http://testserver", ttl_s=600).url
    w = World(img=img, bob_img=upload(api, png_bytes(photo(96, 72)), key=BOB),
              video=upload(api, H.clip_mp4()), bob_video=upload(api, H.clip_mp4(), key=BOB),
              archive=upload(api, archive), bob_archive=upload(api, archive, key=BOB),
              job=job.json()["id"], model=model_id, tuned=tuned_id,
              file_url=url.removeprefix("http://testserver"), file_key=key)
    w.uploads.update(
        exif6=upload(api, H.exif_rotated_jpeg(photo(96, 72), 6)),
        zip_bomb=upload(api, H.zip_bomb_declared()),
        zip_lying=upload(api, H.zip_bomb_lying(declare=1000)),
        zip_corrupt=upload(api, H.zip_corrupt_deflate(png_bytes(photo(64, 64)))),
        zip_encrypted=upload(api, H.zip_encrypted_flag(png_bytes(photo(64, 64)))),
        zip_many=upload(api, H.zip_many_entries(1001)),
        zip_nested=upload(api, H.zip_nested(archive)),
        zip_pixel_bomb=upload(api, H.zip_of({"a.png": H.png_claiming(20000, 20000)})),
        zip_traversal_name=upload(api, H.zip_of({"../../../etc/a.png": png_bytes(photo(64, 64))})),
    )
    return w


# --- the corpus -------------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile request. `request(w)` returns kwargs for TestClient.request; `status` the
    expected 4xx (or a set); `field` the field the problem must name (in `errors[].field`, or in
    `detail` when there is no field-level list); None only for a path no route matches."""

    request: Callable[[World], dict[str, Any]]
    status: int | set[int]
    field: str | None
    key: str | None = ALICE


def post(url: str, body: Any = None, content: str | bytes | None = None) -> Callable[[World], dict]:
    return lambda w: dict(method="POST", url=url, **({"content": content, "headers": {"Content-Type": "application/json"}}
                                                     if content is not None else {"json": body}))


def colorize(**extra) -> Callable[[World], dict]:
    return lambda w: dict(method="POST", url="/v1/colorizations",
                          json={"image": w.img, **{k: (v(w) if callable(v) else v) for k, v in extra.items()}})


def colorize_raw(fragment: str) -> Callable[[World], dict]:
    """A JSON text (NaN, Infinity, huge literals are not expressible through `json=`)."""
    return lambda w: dict(method="POST", url="/v1/colorizations", content='{"image": "%s", %s}' % (w.img, fragment),
                          headers={"Content-Type": "application/json"})


def upload_of(data: bytes, name: str = "image.png", ctype: str = "image/png") -> Callable[[World], dict]:
    return lambda w: dict(method="POST", url="/v1/uploads", files={"file": (name, data, ctype)})


def get(url: Callable[[World], str] | str, **params) -> Callable[[World], dict]:
    return lambda w: dict(method="GET", url=url(w) if callable(url) else url, params=params)


def stroke(points, color="#ff0000", width=6):
    return {"color": color, "width": width, "points": points}


def fit(**body) -> Callable[[World], dict]:
    def build(w):
        resolved = {k: (v(w) if callable(v) else v) for k, v in body.items()}
        return dict(method="POST", url="/v1/anomaly-models", json={"name": "m", **resolved})
    return build


def edit(**body) -> Callable[[World], dict]:
    def build(w):
        resolved = {k: (v(w) if callable(v) else v) for k, v in body.items()}
        return dict(method="POST", url="/v1/video-edits", json={"edits": ["a bear"], **resolved})
    return build


def generate(**body) -> Callable[[World], dict]:
    return lambda w: dict(method="POST", url="/v1/video-generations", json={"prompts": ["a river"], **body})


def file_url(mutate: Callable[[str], str]) -> Callable[[World], dict]:
    return lambda w: dict(method="GET", url=mutate(w.file_url))


def _query(path: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(path).query))


def _with_query(path: str, **changes) -> str:
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(path)
    return f"{parts.path}?{urlencode({**_query(path), **changes})}"


def _png_truncated() -> bytes:
    data = png_bytes(photo(96, 72))
    return data[: len(data) // 2]


def _gif_truncated() -> bytes:
    buf = io.BytesIO()
    photo(96, 72).convert("P").save(buf, format="GIF")
    return buf.getvalue()[:600]


def _webhook(url: str) -> dict:
    return {"url": url, "secret": "s" * 32}


def _padding_over(limit: int) -> str:
    return "x" * (limit + 1)


CASES: dict[str, Case] = {
    # --- uploads: empty, truncated, not images, bombs, broken multipart ---
    "upload/zero-bytes": Case(upload_of(b""), 422, "file"),
    "upload/truncated-png": Case(upload_of(_png_truncated()), 422, "file"),
    "upload/truncated-jpeg": Case(upload_of(H.jpeg_bytes(photo(96, 72))[:1500], "a.jpg", "image/jpeg"), 422, "file"),
    "upload/truncated-gif": Case(upload_of(_gif_truncated(), "a.gif", "image/gif"), 422, "file"),
    "upload/png-data-shorter-than-header": Case(upload_of(H.png_claiming(100, 100)), 422, "file"),
    "upload/text-as-png": Case(upload_of(b"just some text, honest", "photo.png"), 415, "file"),
    "upload/html-as-image": Case(upload_of(b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
                                           "photo.jpg", "image/jpeg"), 415, "file"),
    "upload/svg-with-script": Case(upload_of(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
                                             "a.svg", "image/svg+xml"), 415, "file"),
    "upload/png-header-20000x20000": Case(upload_of(H.png_claiming(20000, 20000)), 422, "file"),
    "upload/jpeg-header-20000x20000": Case(upload_of(H.jpeg_claiming(20000, 20000), "a.jpg", "image/jpeg"), 422, "file"),
    "upload/gif-header-20000x20000": Case(upload_of(H.gif_claiming(20000, 20000), "a.gif", "image/gif"), 422, "file"),
    "upload/just-over-the-pixel-limit": Case(upload_of(H.png_claiming(1001, 1000)), 422, "file"),
    "upload/no-file-field": Case(lambda w: dict(method="POST", url="/v1/uploads",
                                                files={"photo": ("a.png", png_bytes(photo(8, 8)), "image/png")}),
                                 422, "file"),
    "upload/file-as-text-field": Case(lambda w: dict(method="POST", url="/v1/uploads", data={"file": "hello"}), 422, "file"),
    "upload/two-files": Case(lambda w: dict(method="POST", url="/v1/uploads", files=[
        ("file", ("a.png", png_bytes(photo(8, 8)), "image/png")),
        ("file", ("b.png", png_bytes(photo(8, 8)), "image/png"))]), 422, "file"),
    "upload/multipart-without-boundary": Case(lambda w: dict(method="POST", url="/v1/uploads", content=b"abc",
                                                             headers={"Content-Type": "multipart/form-data"}), 422, "file"),
    "upload/json-instead-of-multipart": Case(post("/v1/uploads", {"file": "aGVsbG8="}), 422, "file"),
    "upload/over-the-size-limit": Case(upload_of(b"\x89PNG\r\n\x1a\n" + b"\x00" * (UPLOAD_LIMIT + 100_000)), 413, "file"),
    "upload/without-a-key": Case(upload_of(png_bytes(photo(8, 8))), 401, "Authorization", key=None),

    # --- colorizations: prompts, numbers, unknown fields, wrong types, strokes, references ---
    "colorize/prompt-100k-characters": Case(colorize(prompt="a" * 100_000), 422, "prompt"),
    "colorize/prompt-with-NUL": Case(colorize(prompt="red\x00car"), 422, "prompt"),
    "colorize/prompt-with-escape-sequence": Case(colorize(prompt="\x1b[2J\x1b[31mred"), 422, "prompt"),
    "colorize/negative-prompt-with-bell": Case(colorize(negative_prompt="dull\x07"), 422, "negative_prompt"),
    "colorize/steps-NaN": Case(colorize_raw('"steps": NaN'), 422, "steps"),
    "colorize/guidance-scale-NaN": Case(colorize_raw('"guidance": {"scale": NaN}'), 422, "guidance.scale"),
    "colorize/sag-scale-Infinity": Case(colorize_raw('"sag_scale": Infinity'), 422, "sag_scale"),
    "colorize/sag-scale-1e400": Case(colorize_raw('"sag_scale": 1e400'), 422, "sag_scale"),
    "colorize/steps-negative": Case(colorize(steps=-5), 422, "steps"),
    "colorize/seed-negative": Case(colorize(seed=-1), 422, "seed"),
    "colorize/seed-2**64": Case(colorize(seed=2**64), 422, "seed"),
    "colorize/num-outputs-huge": Case(colorize(num_outputs=10**9), 422, "num_outputs"),
    "colorize/steps-5000-digit-integer": Case(colorize_raw('"steps": ' + "9" * 5000), {400, 422}, "body"),
    "colorize/unknown-field": Case(colorize(surprise=1), 422, "surprise"),
    "colorize/unknown-nested-field": Case(colorize(guidance={"mode": "cfg", "extra": 1}), 422, "guidance.extra"),
    "colorize/image-wrong-type": Case(lambda w: dict(method="POST", url="/v1/colorizations", json={"image": 12345}),
                                      422, "image"),
    "colorize/strokes-wrong-type": Case(colorize(strokes="red at the top"), 422, "strokes"),
    "colorize/body-is-an-array": Case(post("/v1/colorizations", [1, 2, 3]), 422, "body"),
    "colorize/body-malformed-json": Case(post("/v1/colorizations", content='{"image": "upl_'), 422, "body"),
    "colorize/body-nested-100k-deep": Case(post("/v1/colorizations", content='{"strokes": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                                           {400, 422}, "body"),
    "colorize/body-invalid-utf8": Case(post("/v1/colorizations", content=b'{"image": "\xff\xfe"}'), {400, 422}, "body"),
    "colorize/stroke-right-of-the-image": Case(colorize(strokes=[stroke([[97, 10]])]), 422, "strokes.0.points.0"),
    "colorize/stroke-negative-coordinates": Case(colorize(strokes=[stroke([[1, 1]]), stroke([[5, -1]])]), 422,
                                                 "strokes.1.points.0"),
    "colorize/stroke-NaN-point": Case(colorize_raw('"strokes": [{"color": "#ff0000", "points": [[NaN, 1]]}]'), 422,
                                      "strokes.0.points.0"),
    "colorize/stroke-width-huge": Case(colorize(strokes=[stroke([[1, 1]], width=1e9)]), 422, "strokes.0.width"),
    "colorize/too-many-strokes": Case(colorize(strokes=[stroke([[1, 1]])] * 257), 422, "strokes"),
    "colorize/too-many-points-in-all": Case(colorize(strokes=[stroke([[1, 1]] * 4000)] * 6), 422, "strokes"),
    "colorize/exif-rotated-stroke-outside-upright-image": Case(
        colorize(image=lambda w: w.uploads["exif6"], strokes=[stroke([[80, 10]])]), 422, "strokes.0.points.0"),
    "colorize/image-of-another-tenant": Case(colorize(image=lambda w: w.bob_img), 422, "image"),
    "colorize/exemplar-of-another-tenant": Case(colorize(exemplar=lambda w: w.bob_img), 422, "exemplar"),
    "colorize/stroke-image-of-another-tenant": Case(colorize(stroke_image=lambda w: w.bob_img), 422, "stroke_image"),
    "colorize/image-nonexistent": Case(colorize(image=NO_UPLOAD), 422, "image"),
    "colorize/image-path-traversal": Case(colorize(image="../../../etc/passwd"), 422, "image"),
    "colorize/image-is-a-video": Case(colorize(image=lambda w: w.video), 422, "image"),
    "colorize/image-is-a-zip": Case(colorize(image=lambda w: w.archive), 422, "image"),
    "colorize/without-a-key": Case(colorize(), 401, "Authorization", key=None),
    "colorize/unknown-key": Case(colorize(), 401, "Authorization", key="not-a-key-0123456789abcdef"),
    "colorize/json-body-over-1MiB": Case(colorize(prompt=_padding_over(JSON_LIMIT)), 413, "body"),
    # webhook targets are resolved at submission: hosts and ports no resolver accepts are the client's error
    "colorize/webhook-host-not-idna-encodable": Case(colorize(webhook=_webhook("http://0\u0640/hook")), 422,
                                                     "webhook.url"),
    "colorize/webhook-host-label-over-63": Case(colorize(webhook=_webhook("http://" + "a" * 64 + ".example/hook")),
                                                422, "webhook.url"),
    "colorize/webhook-port-out-of-range": Case(colorize(webhook=_webhook("http://example.com:99999/hook")), 422,
                                               "webhook.url"),
    "colorize/webhook-broken-ipv6-literal": Case(colorize(webhook=_webhook("http://[::1/hook")), 422, "webhook.url"),
    "colorize/webhook-to-metadata-address": Case(colorize(webhook=_webhook("http://169.254.169.254/latest")), 422,
                                                 "webhook.url"),

    # --- video generations ---
    "video-gen/prompt-100k-characters": Case(generate(prompts=["a" * 100_000]), 422, "prompts.0"),
    "video-gen/prompt-with-NUL": Case(generate(prompts=["a river", "a\x00sea"]), 422, "prompts.1"),
    "video-gen/prompt-blank": Case(generate(prompts=["a river", "   "]), 422, "prompts.1"),
    "video-gen/too-many-prompts": Case(generate(prompts=["p"] * 9), 422, "prompts"),
    "video-gen/width-not-a-multiple-of-16": Case(generate(width=100, height=96), 422, "width"),
    "video-gen/frame-pixels-over-the-limit": Case(generate(width=1360, height=1360), 422, "width"),
    "video-gen/layout-over-the-frame-limit": Case(generate(segments=16, overlap=0), 422, "prompts"),
    "video-gen/guidance-negative": Case(generate(guidance_scale=-1), 422, "guidance_scale"),
    "video-gen/kv-window-reversed": Case(generate(kv_sharing={"steps": [30, 2]}), 422, "kv_sharing"),
    "video-gen/kv-unknown-field": Case(generate(kv_sharing={"bogus": True}), 422, "kv_sharing.bogus"),
    "video-gen/fps-wrong-type": Case(generate(fps="fast"), 422, "fps"),

    # --- video edits ---
    "video-edit/video-of-another-tenant": Case(edit(video=lambda w: w.bob_video, source_prompt="s"), 422, "video"),
    "video-edit/video-is-an-image": Case(edit(video=lambda w: w.img, source_prompt="s"), 422, "video"),
    "video-edit/video-nonexistent": Case(edit(video=NO_UPLOAD, source_prompt="s"), 422, "video"),
    "video-edit/tuned-model-of-another-tenant": Case(edit(tuned_model=lambda w: w.tuned), 422, "tuned_model", key=BOB),
    "video-edit/tuned-model-nonexistent": Case(edit(tuned_model=NO_TUNED), 422, "tuned_model"),
    "video-edit/edit-with-NUL": Case(edit(video=lambda w: w.video, source_prompt="s", edits=["a\x00b"]), 422, "edits.0"),
    "video-edit/source-prompt-100k": Case(edit(video=lambda w: w.video, source_prompt="s" * 100_000), 422,
                                          "source_prompt"),
    "video-edit/frames-zero": Case(edit(video=lambda w: w.video, source_prompt="s", frames=0), 422, "frames"),
    "video-edit/tune-steps-huge": Case(edit(video=lambda w: w.video, source_prompt="s", tune_steps=10**12), 422,
                                       "tune_steps"),

    # --- anomaly models: archives (zip bombs), references, numbers ---
    "anomaly/zip-bomb-1000-to-1": Case(fit(archive=lambda w: w.uploads["zip_bomb"]), 422, "archive"),
    "anomaly/zip-bomb-lying-headers": Case(fit(archive=lambda w: w.uploads["zip_lying"]), 422, "archive"),
    "anomaly/zip-corrupt-deflate": Case(fit(archive=lambda w: w.uploads["zip_corrupt"]), 422, "archive"),
    "anomaly/zip-encrypted-entry": Case(fit(archive=lambda w: w.uploads["zip_encrypted"]), 422, "archive"),
    "anomaly/zip-1001-entries": Case(fit(archive=lambda w: w.uploads["zip_many"]), 422, "archive"),
    "anomaly/zip-of-a-zip": Case(fit(archive=lambda w: w.uploads["zip_nested"]), 422, "archive"),
    "anomaly/zip-holding-a-20000x20000-png": Case(fit(archive=lambda w: w.uploads["zip_pixel_bomb"]), 422, "archive"),
    "anomaly/archive-of-another-tenant": Case(fit(archive=lambda w: w.bob_archive), 422, "archive"),
    "anomaly/archive-is-an-image": Case(fit(archive=lambda w: w.img), 422, "archive"),
    "anomaly/images-of-another-tenant": Case(fit(images=lambda w: [w.img, w.bob_img]), 422, "images.1"),
    "anomaly/name-with-NUL": Case(fit(name="m\x00", images=lambda w: [w.img]), 422, "name"),
    "anomaly/image-size-not-a-multiple-of-32": Case(fit(images=lambda w: [w.img], image_size=100), 422, "image_size"),
    "anomaly/coreset-ratio-zero": Case(fit(images=lambda w: [w.img], coreset_ratio=0), 422, "coreset_ratio"),
    "anomaly/both-images-and-archive": Case(fit(images=lambda w: [w.img], archive=lambda w: w.archive), 422, "images"),
    "anomaly/score-model-of-another-tenant": Case(lambda w: dict(method="POST", url="/v1/anomaly-scores",
                                                                 json={"model_id": w.model, "images": [w.bob_img]}),
                                                  422, "model_id", key=BOB),
    "anomaly/score-too-many-images": Case(lambda w: dict(method="POST", url="/v1/anomaly-scores",
                                                         json={"model_id": w.model, "images": [w.img] * 65}),
                                          422, "images"),
    "anomaly/get-model-of-another-tenant": Case(get(lambda w: f"/v1/anomaly-models/{w.model}"), 404, "anomaly model",
                                                key=BOB),
    "anomaly/patch-model-of-another-tenant": Case(lambda w: dict(method="PATCH", url=f"/v1/anomaly-models/{w.model}",
                                                                 json={"image_threshold": 0.0}),
                                                  404, "anomaly model", key=BOB),
    "anomaly/delete-model-of-another-tenant": Case(lambda w: dict(method="DELETE", url=f"/v1/anomaly-models/{w.model}"),
                                                   404, "anomaly model", key=BOB),
    "anomaly/patch-threshold-NaN": Case(lambda w: dict(method="PATCH", url=f"/v1/anomaly-models/{w.model}",
                                                       content='{"image_threshold": NaN}',
                                                       headers={"Content-Type": "application/json"}),
                                        422, "image_threshold"),
    "anomaly/patch-unknown-field": Case(lambda w: dict(method="PATCH", url=f"/v1/anomaly-models/{w.model}",
                                                       json={"threshold": 1}), 422, "threshold"),
    "anomaly/get-model-nonexistent": Case(get(f"/v1/anomaly-models/{NO_MODEL}"), 404, "anomaly model"),
    # an encoded `/` is decoded before routing: no route matches, a plain 404 with no field to name
    "anomaly/get-model-path-traversal": Case(get("/v1/anomaly-models/..%2F..%2Fjobs"), 404, None),

    # --- jobs: other tenants, nonexistent ids, numbers ---
    "jobs/get-job-of-another-tenant": Case(get(lambda w: f"/v1/jobs/{w.job}"), 404, "job", key=BOB),
    "jobs/cancel-job-of-another-tenant": Case(lambda w: dict(method="POST", url=f"/v1/jobs/{w.job}/cancel"), 404, "job",
                                              key=BOB),
    "jobs/events-of-another-tenant": Case(get(lambda w: f"/v1/jobs/{w.job}/events"), 404, "job", key=BOB),
    "jobs/get-nonexistent": Case(get(f"/v1/jobs/{NO_JOB}"), 404, "job"),
    "jobs/get-10k-character-id": Case(get("/v1/jobs/job_" + "f" * 10_000), 404, "job"),
    "jobs/get-path-traversal": Case(get("/v1/jobs/..%2F..%2Fuploads"), 404, None),
    "jobs/wait-NaN": Case(get(lambda w: f"/v1/jobs/{w.job}", wait="nan"), 422, "wait"),
    "jobs/wait-negative": Case(get(lambda w: f"/v1/jobs/{w.job}", wait="-1"), 422, "wait"),
    "jobs/wait-infinite": Case(get(lambda w: f"/v1/jobs/{w.job}", wait="inf"), 422, "wait"),
    "jobs/list-limit-zero": Case(get("/v1/jobs", limit="0"), 422, "limit"),
    "jobs/list-limit-huge": Case(get("/v1/jobs", limit=str(10**30)), 422, "limit"),
    "jobs/list-cursor-path-traversal": Case(get("/v1/jobs", cursor="../../x"), 422, "cursor"),
    "jobs/list-status-unknown": Case(get("/v1/jobs", status="exploded"), 422, "status"),
    "jobs/upload-of-another-tenant": Case(get(lambda w: f"/v1/uploads/{w.img}"), 404, "upload", key=BOB),

    # --- file URLs: other tenants, tampering, expiry, traversal ---
    "files/with-another-tenants-key": Case(file_url(lambda u: u), 404, "file", key=BOB),
    "files/tampered-signature": Case(file_url(lambda u: _with_query(u, signature="0" * 64)), 404, "file", key=None),
    "files/signature-one-hex-digit-changed": Case(file_url(lambda u: _with_query(
        u, signature=("1" if _query(u)["signature"][0] != "1" else "2") + _query(u)["signature"][1:])), 404, "file",
        key=None),
    "files/expired": Case(file_url(lambda u: _with_query(u, expires=str(int(time.time()) - 10))), 404, "file", key=None),
    "files/expiry-extended": Case(file_url(lambda u: _with_query(u, expires=str(int(_query(u)["expires"]) + 3600))),
                                  404, "file", key=None),
    "files/tenant-swapped": Case(file_url(lambda u: _with_query(u, tenant="bob")), 404, "file", key=None),
    "files/key-swapped": Case(file_url(lambda u: u.replace("output_0", "output_1")), 404, "file", key=None),
    "files/dotdot-in-key": Case(file_url(lambda u: u.replace("jobs/job_hostile/", "jobs/job_hostile/../../")), 404,
                                "file", key=None),
    "files/encoded-dotdot": Case(file_url(lambda u: u.replace("jobs/job_hostile/", "jobs/..%2F..%2F")), 404, "file",
                                 key=None),
    "files/signing-secret": Case(file_url(lambda u: u.replace("jobs/job_hostile/output_0.png", ".signing_secret")), 404,
                                 "file", key=None),
    "files/meta-tree": Case(file_url(lambda u: u.replace("jobs/", ".meta/jobs/")), 404, "file", key=None),
    "files/NUL-in-key": Case(file_url(lambda u: u.replace("output_0", "output_0%00")), 404, "file", key=None),
    "files/absolute-path": Case(file_url(lambda u: u.replace("/v1/files/jobs/job_hostile/output_0.png",
                                                             "/v1/files//etc/passwd")), 404, "file", key=None),
    "files/expires-not-an-integer": Case(file_url(lambda u: _with_query(u, expires="tomorrow")), 422, "expires", key=None),
    "files/expires-5000-digits": Case(file_url(lambda u: _with_query(u, expires="9" * 5000)), 422, "expires", key=None),
    "files/expires-4300-digits": Case(file_url(lambda u: _with_query(u, expires="9" * 4300)), 404, "file", key=None),
    "files/signature-missing": Case(file_url(lambda u: u.split("&signature=")[0]), 422, "signature", key=None),
}


def named_fields(problem: dict) -> list[str]:
    return [str(e.get("field")) for e in problem.get("errors") or []]


def assert_problem_naming(r, status: int | set[int], name: str | None) -> dict:
    assert r.status_code < 500, f"server error {r.status_code}: {r.text[:500]}"
    allowed = status if isinstance(status, set) else {status}
    assert r.status_code in allowed, f"expected {allowed}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"] == PROBLEM, r.headers["content-type"]
    problem = r.json()
    assert problem["status"] == r.status_code and problem["code"] and problem["title"]
    if name is None:
        return problem
    fields = named_fields(problem)
    named = any(f == name or f.startswith(name + ".") for f in fields) or (not fields and name in problem["detail"])
    assert named, f"the problem does not name `{name}`: fields {fields}, detail {problem['detail']!r}"
    return problem


def send(client, case_request: dict, key: str | None):
    kwargs = dict(case_request)
    headers = {**(auth(key) if key else {}), **kwargs.pop("headers", {})}
    return client.request(headers=headers, **kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_is_a_problem_naming_the_field(api, world, name):
    case = CASES[name]
    r = send(api, case.request(world), case.key)
    assert_problem_naming(r, case.status, case.field)


def test_the_corpus_is_large_enough():
    assert len(CASES) + len(WORKING) + len(WORKER_HOSTILE) >= 40


def test_nothing_hostile_changed_state(api, world):
    """After the corpus: alice's job, model and file are intact; nothing bob did touched them."""
    assert api.get(f"/v1/jobs/{world.job}", headers=auth(ALICE)).json()["status"] == "queued"
    assert api.get(f"/v1/anomaly-models/{world.model}", headers=auth(ALICE)).json()["thresholds"]["image"] == 1.0
    r = api.get(world.file_url)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"


# --- oversize bodies without a Content-Length: the limit must hold while the body streams ---


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i: i + size]


def test_chunked_json_body_over_the_limit_is_413(api, world):
    body = json.dumps({"image": world.img, "prompt": _padding_over(JSON_LIMIT)}).encode()
    r = api.post("/v1/colorizations", content=_chunks(body), headers={**auth(ALICE), "Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_problem_naming(r, 413, "body")


def test_chunked_upload_over_the_limit_is_413(api):
    boundary = "hostileboundary"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
               f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + b"\x00" * (UPLOAD_LIMIT * 3) + \
              f"\r\n--{boundary}--\r\n".encode()
    r = api.post("/v1/uploads", content=_chunks(payload),
                 headers={**auth(ALICE), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_problem_naming(r, 413, "file")


# --- inputs that must be accepted as they are (no job needed) ---


def test_prompt_with_tab_newline_and_unicode_is_accepted(api, world):
    prompt = "a red\tcar\non a street\r\n— 東京, ñ, 🚗"
    r = api.post("/v1/colorizations", json={"image": world.img, "prompt": prompt}, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    assert r.json()["params"]["prompt"] == prompt


def test_exif_rotated_upload_reports_the_upright_size_and_takes_upright_strokes(api, world):
    meta = api.get(f"/v1/uploads/{world.uploads['exif6']}", headers=auth(ALICE)).json()
    assert (meta["width"], meta["height"]) == (72, 96)  # stored 96x72, orientation 6: shown 72x96
    r = api.post("/v1/colorizations", json={"image": world.uploads["exif6"], "strokes": [stroke([[70, 90]])]},
                 headers=auth(ALICE))
    assert r.status_code == 202, r.text


def test_zip_entry_names_are_labels_not_paths(api, world):
    """`../../../etc/a.png` inside an archive is never used as a path (entries are read in memory):
    the archive is accepted, and nothing is written outside the store."""
    r = api.post("/v1/anomaly-models", json={"name": "m", "archive": world.uploads["zip_traversal_name"]},
                 headers=auth(ALICE))
    assert r.status_code == 202, r.text


def test_cursor_of_another_tenant_leaks_nothing(api, world):
    """Alice's job id as bob's cursor: bob still sees only his own jobs, and not hers."""
    r = api.get("/v1/jobs", params={"cursor": world.job}, headers=auth(BOB))
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        bobs = {j["id"] for j in api.get("/v1/jobs", params={"limit": 100}, headers=auth(BOB)).json()["items"]}
        seen = {j["id"] for j in r.json()["items"]}
        assert world.job not in seen and seen <= bobs


# --- through a real worker: unusual images must work, correctly ---


def wait(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=auth(ALICE)).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(job_id)


TINY_JOB = {"steps": 1, "num_outputs": 1, "seed": 5, "sag_scale": 0, "guidance": {"mode": "none", "scale": 1.0}}


def colorize_live(client, image_id: str) -> dict:
    r = client.post("/v1/colorizations", json={"image": image_id, **TINY_JOB}, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    return wait(client, r.json()["id"])


def assert_worker_serves(client) -> None:
    """The worker is alive and well after a hostile job: a tiny job succeeds."""
    assert client.thread.is_alive()
    job = colorize_live(client, client.probe_image)
    assert job["status"] == "succeeded", job["error"]


def fetch(client, url: str) -> Image.Image:
    r = client.get(url.removeprefix("http://testserver"))
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def _gray16():
    gray8 = np.asarray(photo(96, 72).convert("L"))
    return H.gray16_png(gray8), Image.fromarray(gray8).convert("RGB")


def _exif(orientation: int, transpose):
    stored = photo(96, 72)
    data = H.exif_rotated_jpeg(stored, orientation)
    return data, Image.open(io.BytesIO(data)).convert("RGB").transpose(transpose)


def _animated():
    first, second = photo(96, 72), ImageOps.invert(photo(96, 72)).rotate(90)
    data = H.animated_gif(first, second)
    return data, Image.open(io.BytesIO(data)).convert("RGB")  # frame 0, as decoded


def _cmyk():
    data = H.cmyk_jpeg(photo(96, 72))
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def _palette():
    data = H.palette_png(photo(96, 72))
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def _palette_transparent():
    data = H.palette_transparent_gif(photo(96, 72))
    return data, H.composite_on_white(Image.open(io.BytesIO(data)).convert("RGBA"))


def _rgba():
    data = H.rgba_png(photo(96, 72))
    return data, H.composite_on_white(Image.open(io.BytesIO(data)))


def _gray_alpha():
    la = photo(96, 72).convert("LA")
    la.putalpha(Image.new("L", la.size, 128))
    return png_bytes(la), H.composite_on_white(la.convert("RGBA"))


def _tiny(w: int, h: int):
    img = photo(max(w, 8), max(h, 8)).resize((w, h))
    return png_bytes(img), img


# name -> () -> (bytes, the upright RGB image the output's L must match)
WORKING: dict[str, Callable[[], tuple[bytes, Image.Image]]] = {
    "cmyk-jpeg": _cmyk,
    "16-bit-grayscale-png": _gray16,
    "palette-png": _palette,
    "palette-gif-with-transparency": _palette_transparent,
    "rgba-png-alpha-ramp": _rgba,
    "gray-alpha-png": _gray_alpha,
    "exif-orientation-6": lambda: _exif(6, Image.Transpose.ROTATE_270),
    "exif-orientation-8": lambda: _exif(8, Image.Transpose.ROTATE_90),
    "exif-orientation-3": lambda: _exif(3, Image.Transpose.ROTATE_180),
    "animated-gif-first-frame": _animated,
    "1x1": lambda: _tiny(1, 1),
    "400x2-strip": lambda: _tiny(400, 2),
}


@pytest.mark.parametrize("name", list(WORKING))
def test_unusual_image_colorizes_correctly(live, name):
    data, upright = WORKING[name]()
    image_id = upload(live, data)
    meta = live.get(f"/v1/uploads/{image_id}", headers=auth(ALICE)).json()
    assert (meta["width"], meta["height"]) == upright.size
    job = colorize_live(live, image_id)
    assert job["status"] == "succeeded", job["error"]
    out = fetch(live, job["result"]["images"][0]["url"])
    assert out.size == upright.size, f"output {out.size}, upright input {upright.size}"
    assert (job["result"]["images"][0]["width"], job["result"]["images"][0]["height"]) == upright.size
    diff = np.abs(l_channel(out) - l_channel(upright)).mean()
    assert diff <= 2.0, f"L differs from the upright input's by {diff:.2f} on average"


def test_exif_rotation_is_not_a_coincidence(live):
    """Guard the orientation test: the stored (unrotated) pixels' L does not match the output."""
    data, upright = _exif(6, Image.Transpose.ROTATE_270)
    job = colorize_live(live, upload(live, data))
    out = fetch(live, job["result"]["images"][0]["url"])
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    assert out.size != stored.size
    assert np.abs(l_channel(out) - l_channel(upright)).mean() < \
        np.abs(l_channel(out.resize(stored.size)) - l_channel(stored)).mean()


# --- through a real worker: hostile inputs the API cannot see fail their job, the worker lives ---


def _truncated_mp4() -> bytes:
    data = H.clip_mp4(frames=12)
    return data[: len(data) // 2]


# name -> (request body builder given the upload id, field the error message starts with, bytes builder)
WORKER_HOSTILE: dict[str, tuple[str, Callable[[], bytes], str | None]] = {
    "video-with-zero-frames": ("video", H.zero_frame_mp4, None),
    "video-corrupt-mp4": ("video", H.corrupt_mp4, None),
    "video-over-the-duration-limit": ("video", lambda: H.long_mp4(700), "600"),
    "video-over-the-frame-limit": ("video", lambda: H.many_frames_mp4(10_001), "10000"),
    "webm-magic-then-noise": ("video", lambda: b"\x1a\x45\xdf\xa3" + np.random.default_rng(2).bytes(3000), None),
    "zip-bomb-lying-about-its-size": ("archive", lambda: H.zip_bomb_lying(declare=4 << 20, head=png_bytes(photo(8, 8))),
                                      None),
}


@pytest.mark.parametrize("name", list(WORKER_HOSTILE))
def test_hostile_input_fails_its_job_and_the_worker_keeps_serving(live, name):
    field_name, build, needle = WORKER_HOSTILE[name]
    upload_id = upload(live, build())
    if field_name == "video":
        body = {"video": upload_id, "source_prompt": "a clip", "edits": ["a bear"], "tune_steps": 1, "frames": 2,
                "width": 64, "height": 64, "steps": 1, "seed": 1}
        r = live.post("/v1/video-edits", json=body, headers=auth(ALICE))
    else:
        r = live.post("/v1/anomaly-models", json={"name": "m", "archive": upload_id, "backbone": "tiny",
                                                  "image_size": 64}, headers=auth(ALICE))
    if r.status_code == 422:  # refused at submission: better still
        assert_problem_naming(r, 422, field_name)
    else:
        assert r.status_code == 202, r.text
        job = wait(live, r.json()["id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "invalid_input", job["error"]
        assert job["error"]["message"].startswith(f"{field_name}:"), job["error"]["message"]
        if needle:
            assert needle in job["error"]["message"], job["error"]["message"]
    assert_worker_serves(live)


def test_truncated_mp4_either_uses_the_frames_that_decode_or_fails_cleanly(live):
    upload_id = upload(live, _truncated_mp4())
    body = {"video": upload_id, "source_prompt": "a clip", "edits": ["a bear"], "tune_steps": 1, "frames": 2,
            "width": 64, "height": 64, "steps": 1, "seed": 1}
    r = live.post("/v1/video-edits", json=body, headers=auth(ALICE))
    assert r.status_code == 202, r.text
    job = wait(live, r.json()["id"])
    if job["status"] == "failed":
        assert job["error"]["code"] == "invalid_input" and job["error"]["message"].startswith("video:"), job["error"]
    else:
        assert job["status"] == "succeeded" and job["result"]["videos"][0]["frames"] == 2
    assert_worker_serves(live)
