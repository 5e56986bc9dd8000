"""The client without a server: retries and Retry-After, error mapping, SSE resume, downloads,
upload encodings, settings, and the package staying light (httpx MockTransport)."""
from __future__ import annotations

import asyncio
import email.utils
import io
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import visionjobs_client as vc
from visionjobs_client import client as sync_module
from visionjobs_client._base import parse_retry_after
from visionjobs_client.sse import parse as parse_sse

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = "job_" + "0" * 24
BASE = "http://vj.test"


def job_json(status: str = "queued", progress: float = 0.0, **extra) -> dict:
    body = {"id": JOB_ID, "kind": "colorize", "status": status, "progress": progress, "stage": status,
            "queue_position": None, "attempt": 1, "created_at": "2026-01-01T00:00:00Z", "started_at": None,
            "finished_at": None, "params": {}, "error": None, "result": None, "model_profile": "tiny"}
    body.update(extra)
    return body


def problem(status: int, code: str, detail: str = "", **extra) -> dict:
    return {"type": f"https://visionjobs.dev/problems/{code}", "title": code, "status": status, "detail": detail,
            "instance": "/v1/x", "code": code, **extra}


class Recorder:
    """A MockTransport handler answering from a list of responses, recording the requests."""

    def __init__(self, *responses: httpx.Response):
        self.responses, self.requests = list(responses), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)


@pytest.fixture
def sleeps(monkeypatch):
    """Record the client's back-off sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(sync_module.time, "sleep", recorded.append)
    return recorded


def make(handler, **kw) -> vc.Client:
    return vc.Client(BASE, api_key="k" * 20, transport=httpx.MockTransport(handler), **kw)


def test_503_with_retry_after_zero_then_200_is_retried_with_the_same_idempotency_key(sleeps):
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "0"}, json=problem(503, "queue_unavailable")),
                   httpx.Response(202, json=job_json()))
    with make(rec) as client:
        job = client.submit("colorize", {"image": "upl_" + "a" * 24})
    assert job.id == JOB_ID and len(rec.requests) == 2
    assert sleeps == [0.0]
    keys = {r.headers["Idempotency-Key"] for r in rec.requests}
    assert len(keys) == 1 and keys.pop().startswith("vjc-")  # one fresh key per call, reused by its retries
    assert all(r.headers["Authorization"] == "Bearer " + "k" * 20 for r in rec.requests)
    assert rec.requests[0].url.path == "/v1/colorizations"


def test_retry_after_seconds_and_http_date_are_honoured(sleeps):
    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    rec = Recorder(httpx.Response(429, headers={"Retry-After": "2"}, json=problem(429, "rate_limited")),
                   httpx.Response(503, headers={"Retry-After": soon}),
                   httpx.Response(200, json=job_json("running")))
    with make(rec) as client:
        assert client.get_job(JOB_ID).status == vc.JobStatus.running
    assert sleeps[0] == 2.0 and 1.0 <= sleeps[1] <= 3.0
    assert parse_retry_after("nonsense") is None and parse_retry_after(None) is None


def test_a_retry_after_beyond_the_bound_is_not_shortened_but_raised(sleeps):
    rec = Recorder(httpx.Response(429, headers={"Retry-After": "120"}, json=problem(429, "rate_limited", "slow down")))
    with make(rec, max_retry_wait=30) as client, pytest.raises(vc.RateLimited) as err:
        client.get_job(JOB_ID)
    assert len(rec.requests) == 1 and sleeps == []
    assert err.value.retry_after == 120 and err.value.status == 429 and err.value.code == "rate_limited"


def test_retries_are_bounded_with_capped_backoff(sleeps):
    rec = Recorder(*[httpx.Response(503, json=problem(503, "store_unavailable")) for _ in range(4)])
    with make(rec, max_retries=3, backoff=0.5, max_retry_wait=1.5) as client, pytest.raises(vc.Unavailable) as err:
        client.list_jobs()
    assert len(rec.requests) == 4 and len(sleeps) == 3
    assert all(0 < s <= 1.5 for s in sleeps) and sleeps[2] >= 0.75  # 0.5, 1, 2 -> capped at 1.5, jittered by half
    assert err.value.problem.code == "store_unavailable"


def test_other_errors_are_not_retried_and_map_to_their_types(sleeps):
    cases = [(401, vc.Unauthorized), (404, vc.NotFound), (422, vc.ValidationError), (413, vc.ValidationError),
             (500, vc.ServerError), (409, vc.Conflict)]
    for status, cls in cases:
        rec = Recorder(httpx.Response(status, json=problem(status, "x", "why",
                                                           errors=[{"field": "steps", "message": "too many", "limit": 100}])))
        with make(rec) as client, pytest.raises(cls) as err:
            client.cancel(JOB_ID)
        assert len(rec.requests) == 1 and isinstance(err.value, vc.ApiError)
        assert err.value.fields == ["steps"] and err.value.errors[0]["limit"] == 100 and "why" in str(err.value)
    assert sleeps == []


def test_a_non_problem_error_body_still_raises_a_typed_error(sleeps):
    rec = Recorder(httpx.Response(502, text="<html>bad gateway</html>", headers={"Content-Type": "text/html"}))
    with make(rec) as client, pytest.raises(vc.Unavailable) as err:
        client.get_job(JOB_ID)
    assert err.value.status == 502 and "bad gateway" in err.value.detail


def test_connection_failures_are_retried_then_raised(sleeps):
    calls = []

    def refuse(request):
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with make(refuse, max_retries=2) as client, pytest.raises(vc.ApiConnectionError):
        client.get_job(JOB_ID)
    assert len(calls) == 3 and len(sleeps) == 2


def test_async_client_retries_the_same_way(monkeypatch):
    recorded = []

    async def fake_sleep(s):
        recorded.append(s)

    monkeypatch.setattr(vc.aio.asyncio, "sleep", fake_sleep)
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(429, headers={"Retry-After": "1"}),
                   httpx.Response(202, json=job_json()))

    async def go():
        async with vc.AsyncClient(BASE, transport=httpx.MockTransport(rec)) as client:
            return await client.submit("/v1/colorizations", {"image": "upl_" + "a" * 24}, idempotency_key="mine")

    assert asyncio.run(go()).id == JOB_ID
    assert recorded == [0.0, 1.0] and [r.headers["Idempotency-Key"] for r in rec.requests] == ["mine"] * 3
    assert "Authorization" not in rec.requests[0].headers  # no key: anonymous service


def sse_frame(version: int, job: dict) -> str:
    return f"id: {version}\nevent: job\ndata: {json.dumps(job)}\n\n"


def test_stream_resumes_with_last_event_id_after_a_dropped_connection(sleeps):
    seen_headers = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_headers.append(request.headers.get("Last-Event-ID"))
        if len(seen_headers) == 1:  # two states, then the connection ends early
            body = sse_frame(1, job_json()) + ": keep-alive\n\n" + sse_frame(2, job_json("running", 0.5))
        else:
            body = sse_frame(3, job_json("succeeded", 1.0, result={"images": [], "seed": 3}))
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    with make(handler) as client:
        states = list(client.stream(JOB_ID))
    assert [s.status.value for s in states] == ["queued", "running", "succeeded"]
    assert seen_headers == [None, "2"]
    assert isinstance(states[-1].result, vc.ColorizationResult) and states[-1].result.seed == 3


def test_stream_async_and_the_sse_parser():
    events = list(parse_sse(["retry: 10", "id: 7", "event: job", "data: {\"a\":", "data: 1}", "", ": c", "",
                             "data: x", ""]))
    assert [(e.event, e.id, e.data) for e in events] == [("job", "7", '{"a":\n1}'), ("message", None, "x")]
    assert events[0].retry == 10

    def handler(request):
        return httpx.Response(200, text=sse_frame(1, job_json("running", 0.2)) + "event: gone\ndata: {}\n\n")

    async def go():
        async with vc.AsyncClient(BASE, transport=httpx.MockTransport(handler)) as client:
            return [j async for j in client.stream(JOB_ID)]

    assert [j.progress for j in asyncio.run(go())] == [0.2]  # "gone" ends the stream


def test_wait_long_polls_until_final_and_times_out():
    rec = Recorder(httpx.Response(200, json=job_json("running", 0.3)),
                   httpx.Response(200, json=job_json("failed", 0.3, error={"code": "out_of_memory", "message": "m"})))
    with make(rec) as client:
        job = client.wait(JOB_ID, timeout=100, poll=30)
        assert job.status == vc.JobStatus.failed
        assert [r.url.params["wait"] for r in rec.requests] == ["30.0", "30.0"]
        with pytest.raises(vc.JobFailed) as err:
            client.wait(job, check=True)
        assert err.value.code == "out_of_memory"

    def forever(request):
        return httpx.Response(200, json=job_json("running", 0.5))

    with make(forever) as client, pytest.raises(vc.WaitTimeout) as err:
        client.wait(JOB_ID, timeout=0.01, poll=0.01)
    assert err.value.job.status == vc.JobStatus.running and isinstance(err.value, TimeoutError)


def test_download_sends_no_api_key_and_names_the_file(tmp_path):
    rec = Recorder(httpx.Response(200, content=b"png-bytes"), httpx.Response(200, content=b"again"))
    url = "https://s3.test/bucket/jobs/job_x/output_0.png?X-Amz-Signature=abc"
    with make(rec) as client:
        path = client.download({"url": url}, tmp_path)
        assert path == tmp_path / "output_0.png" and path.read_bytes() == b"png-bytes"
        assert client.download(url) == b"again"
    assert all("Authorization" not in r.headers for r in rec.requests)
    assert not list(tmp_path.glob(".*part"))  # no temporary file left behind


def test_output_files_names_every_url_of_a_result():
    job = vc.Job.model_validate(job_json("succeeded", 1.0, kind="video.edit", result={
        "tuned_model_id": "tvm_x", "tuning": "ran", "tune_seconds": 1.0, "seed": 1, "videos": [
            {"prompt": "p", "url": f"{BASE}/v1/files/jobs/{JOB_ID}/edit_0.mp4?sig=1", "expires_at": "2026-01-01T00:00:00Z",
             "frames": 4, "fps": 8, "width": 64, "height": 64, "content_type": "video/mp4",
             "gif_url": f"{BASE}/v1/files/jobs/{JOB_ID}/edit_0.gif?sig=2", "gif_expires_at": "2026-01-01T00:00:00Z"}]}))
    assert isinstance(job.result, vc.VideoEditResult)
    assert [name for _, name in vc.output_files(job)] == ["edit_0.mp4", "edit_0.gif"]
    evil = vc.Job.model_validate(job_json("succeeded", kind="other", result={"x_url": f"{BASE}/v1/files/jobs/{JOB_ID}/../../etc/passwd"}))
    assert [name for _, name in vc.output_files(evil)] == ["etc/passwd"]  # never climbs out of the directory


def test_unknown_kinds_and_shapes_keep_a_plain_dict():
    assert vc.Job.model_validate(job_json("succeeded", kind="future.kind", result={"a": 1})).result == {"a": 1}
    assert vc.Job.model_validate(job_json("succeeded", result={"images": "changed shape"})).result == {"images": "changed shape"}
    assert vc.Job.model_validate(job_json(new_server_field=1)).model_extra == {"new_server_field": 1}


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.uint8).reshape(3, 4),
    np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8),
    np.random.default_rng(1).integers(0, 256, (4, 6, 4), dtype=np.uint8),
    np.random.default_rng(2).integers(0, 256, (4, 6, 2), dtype=np.uint8),
])
def test_numpy_arrays_become_exact_pngs_without_pillow(array):
    decoded = np.asarray(Image.open(io.BytesIO(vc.array_png(array))))
    assert decoded.shape == array.shape and (decoded == array).all()


def test_float_and_bool_arrays_and_bad_arrays():
    floats = np.asarray(Image.open(io.BytesIO(vc.array_png(np.array([[0.0, 0.5, 1.0, 2.0]])))))
    assert floats.tolist() == [[0, 128, 255, 255]]
    assert np.asarray(Image.open(io.BytesIO(vc.array_png(np.array([[True, False]]))))).tolist() == [[255, 0]]
    for bad in (np.zeros((2, 2, 5)), np.zeros(3), np.array([[300]], dtype=np.int32), np.array([[np.nan]])):
        with pytest.raises(ValueError):
            vc.array_png(bad)


def test_settings_from_flags_then_environment_then_defaults():
    env = {vc.URL_ENV: "http://api.example:9000/", vc.API_KEY_ENV: "env-key"}
    assert vc.ClientSettings.from_env(environ={}) == vc.ClientSettings("http://127.0.0.1:8000", None)
    assert vc.ClientSettings.from_env(environ=env) == vc.ClientSettings("http://api.example:9000", "env-key")
    assert vc.ClientSettings.from_env("http://flag", "flag-key", environ=env) == vc.ClientSettings("http://flag", "flag-key")
    assert (vc.URL_ENV, vc.API_KEY_ENV) == ("VISIONJOBS_URL", "VISIONJOBS_API_KEY")


def test_the_distribution_is_light():
    """httpx, pydantic and standardwebhooks (pure Python) only; importing it loads neither PIL,
    numpy nor the server."""
    meta = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "visionjobs-client"
    assert sorted(d.split(">")[0].split("=")[0] for d in meta["dependencies"]) == ["httpx", "pydantic", "standardwebhooks"]
    code = ("import sys, visionjobs_client; c = visionjobs_client.Client('http://x'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PIL', 'numpy', 'torch', 'service', 'worker', 'models', 'visionjobs', 'fastapi')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "client")
    assert done.returncode == 0, done.stdout + done.stderr


def test_verify_webhook_on_the_standard_webhooks_scheme():
    import base64
    from datetime import datetime, timezone

    import standardwebhooks

    body, now = b'{"event": "running", "job": {"id": "job_x"}}', int(time.time())
    for secret, key in (("s" * 20, b"s" * 20), ("whsec_" + base64.b64encode(b"k" * 24).decode(), b"k" * 24)):
        signature = standardwebhooks.Webhook(key).sign("job_x:running", datetime.fromtimestamp(now, tz=timezone.utc),
                                                       body.decode())
        headers = {"webhook-id": "job_x:running", "webhook-timestamp": str(now), "webhook-signature": signature}
        assert vc.verify_webhook(secret, body, headers)["event"] == "running"
        assert vc.sign_webhook(secret, now, body, msg_id="job_x:running") == signature
        for bad_body, bad_headers, at in [
            (body + b" ", headers, now),  # tampered
            (body, {**headers, "webhook-id": "job_x:succeeded"}, now),  # another delivery's id
            (body, headers, now + 301),  # too old: a replay
            (body, {**headers, "webhook-timestamp": str(now + 1)}, now),
            (body, {**headers, "webhook-signature": "v1,AAAA"}, now),
        ]:
            with pytest.raises(vc.WebhookSignatureError):
                vc.verify_webhook(secret, bad_body, bad_headers, now=at)


def test_verify_webhook_against_an_independent_hmac():
    import hashlib
    import hmac

    secret, body, ts = "s" * 20, b'{"event": "succeeded", "job": {"id": "job_x"}}', 1_800_000_000
    signature = "v1=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert vc.sign_webhook(secret, ts, body) == signature
    headers = {"x-visionjobs-signature": signature, "X-Visionjobs-Timestamp": str(ts)}
    assert vc.verify_webhook(secret, body, headers, now=ts + 10)["event"] == "succeeded"
    for bad_body, bad_headers, now in [
        (body + b" ", headers, ts),  # tampered
        (body, headers, ts + 301),  # too old: a replay
        (body, {"X-Visionjobs-Timestamp": str(ts)}, ts),  # unsigned
        (body, {**headers, "X-Visionjobs-Timestamp": str(ts + 1)}, ts),  # timestamp changed
    ]:
        with pytest.raises(vc.WebhookSignatureError):
            vc.verify_webhook(secret, bad_body, bad_headers, now=now)


def test_inputs_of_every_kind_are_uploaded_first_and_sent_as_ids():
    """Upload fields take ids, Uploads or sources, in lists and nested (validation) too; the
    caller's lists are left as they were; None fields are not sent."""
    uploads, bodies = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/uploads":
            uploads.append(request.content)
            n = len(uploads)
            return httpx.Response(201, json={"id": f"upl_{n:024x}", "filename": "f", "content_type": "image/png",
                                             "size": 1, "sha256": "x", "created_at": "2026-01-01T00:00:00Z"})
        bodies.append((request.url.path, json.loads(request.content)))
        return httpx.Response(202, json=job_json())

    known = vc.Upload(id="upl_" + "e" * 24, filename="k", content_type="image/png", size=1, sha256="x",
                      created_at="2026-01-01T00:00:00Z")
    images = [b"\x89PNG-a", "upl_" + "a" * 24]
    with make(handler) as client:
        client.fit_anomaly_model(images, name="m", validation={"normal": [np.zeros((4, 4), np.uint8)],
                                                               "abnormal": [known]})
        client.score_anomalies("anm_" + "1" * 24, [Image.new("RGB", (4, 4))])
        client.edit_video(b"\x00\x00\x00\x18ftypmp42", source_prompt="s", edits="e", frames=None)
        client.generate_video("one prompt", kv_sharing={"enabled": False})
        client.generate_subject([Image.new("RGB", (4, 4)), known], subject_class="dog", prompt="p", method="expert",
                                tuning={"steps": 5})
        client.tune_subject(["upl_" + "b" * 24], subject_class="dog", prior_preservation=True)
        done = vc.Job.model_validate(job_json("succeeded", 1.0, kind="subject.tune", result={
            "subject_model": "sbm_" + "c" * 24, "steps": 5, "tune_seconds": 1.0, "final_loss": 0.1,
            "num_parameters": 10, "size_bytes": 40}))
        client.generate_subject(prompt="p", subject_model=done)
    assert images == [b"\x89PNG-a", "upl_" + "a" * 24]
    assert len(uploads) == 5
    assert bodies[0] == ("/v1/anomaly-models", {"name": "m", "images": ["upl_" + "0" * 23 + "1", "upl_" + "a" * 24],
                                                "validation": {"normal": ["upl_" + "0" * 23 + "2"],
                                                               "abnormal": ["upl_" + "e" * 24]}})
    assert bodies[1] == ("/v1/anomaly-scores", {"model_id": "anm_" + "1" * 24, "images": ["upl_" + "0" * 23 + "3"]})
    assert bodies[2] == ("/v1/video-edits", {"video": "upl_" + "0" * 23 + "4", "source_prompt": "s", "edits": ["e"]})
    assert bodies[3] == ("/v1/video-generations", {"prompts": ["one prompt"], "kv_sharing": {"enabled": False}})
    assert bodies[4] == ("/v1/subject-generations", {"subject_images": ["upl_" + "0" * 23 + "5", "upl_" + "e" * 24],
                                                     "subject_class": "dog", "prompt": "p", "method": "expert",
                                                     "tuning": {"steps": 5}})
    assert bodies[5] == ("/v1/subject-models", {"subject_images": ["upl_" + "b" * 24], "subject_class": "dog",
                                                "prior_preservation": {"enabled": True}})
    assert bodies[6] == ("/v1/subject-generations", {"prompt": "p", "subject_model": "sbm_" + "c" * 24})
    assert isinstance(done.result, vc.SubjectModelResult)
    with make(handler) as client:  # a folder dataset: abnormal images and their masks (None: no mask)
        client.fit_anomaly_model(["upl_" + "a" * 24], name="rd", model="reverse_distillation", abnormal=[b"\x89PNG-b", known],
                                 abnormal_masks=[b"\x89PNG-m", None], max_epochs=5, patience=0)
    assert len(uploads) == 7
    assert bodies[7] == ("/v1/anomaly-models", {
        "name": "rd", "model": "reverse_distillation", "images": ["upl_" + "a" * 24],
        "abnormal": ["upl_" + "0" * 23 + "6", "upl_" + "e" * 24], "abnormal_masks": ["upl_" + "0" * 23 + "7", None],
        "max_epochs": 5, "patience": 0})
