"""The HTTP contract in embedded mode (no worker here: jobs stay queued unless a test moves them)."""
from __future__ import annotations

import hashlib
import re
import threading
import time

import pytest

from tests.helpers import ALICE, BOB, auth, parse_sse, photo, png_bytes

PROBLEM = "application/problem+json"


def upload(client, data: bytes, key=ALICE, name="photo.png"):
    return client.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")}, headers=auth(key))


def submit(client, upload_id, key=ALICE, **extra):
    return client.post("/v1/colorizations", json={"image": upload_id, **extra}, headers=auth(key))


@pytest.fixture
def upload_id(client):
    return upload(client, png_bytes(photo())).json()["id"]


def test_upload_detects_type_from_content_and_hashes(client):
    data = png_bytes(photo(40, 30))
    r = upload(client, data, name="not-really.txt")
    assert r.status_code == 201
    body = r.json()
    assert body["content_type"] == "image/png" and body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and (body["width"], body["height"]) == (40, 30)
    assert client.get(f"/v1/uploads/{body['id']}", headers=auth(ALICE)).json()["id"] == body["id"]


@pytest.mark.parametrize("data,status", [(b"", 422), (b"<html>hello</html>", 415), (b"\x89PNG\r\n\x1a\n" + b"0" * 50, 422)])
def test_bad_uploads_are_problems_naming_the_field(client, data, status):
    r = upload(client, data)
    assert r.status_code == status and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["field"] == "file"


def test_upload_size_and_pixel_limits(client):
    r = upload(client, b"\x89PNG" + b"0" * 300_000)
    assert r.status_code == 413 and r.json()["errors"][0]["limit"] == 200_000
    from PIL import Image

    big = Image.new("L", (1200, 1000))  # 1.2 MP > the 1 MP limit of this app, compresses to little
    r = upload(client, png_bytes(big))
    assert r.status_code == 422 and r.json()["errors"][0]["limit"] == 1_000_000


def test_submit_answers_202_with_location_and_job(client, upload_id):
    r = submit(client, upload_id, prompt="a red car", steps=3)
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"].endswith(f"/v1/jobs/{job['id']}") and r.headers["location"].startswith("http")
    assert job["status"] == "queued" and job["queue_position"] == 1 and job["attempt"] == 0
    assert job["params"]["steps"] == 3 and 0 <= job["params"]["seed"] < 2**32  # seed fixed at submission
    assert set(job) >= {"id", "kind", "status", "progress", "stage", "queue_position", "attempt", "created_at",
                        "started_at", "finished_at", "params", "error", "result", "model_profile"}
    second = submit(client, upload_id).json()
    assert second["queue_position"] == 2


@pytest.mark.parametrize("extra,field", [({"steps": 0}, "steps"), ({"steps": 101}, "steps"),
                                         ({"num_outputs": 5}, "num_outputs"), ({"seed": -1}, "seed"),
                                         ({"prompt": "x" * 1001}, "prompt"), ({"surprise": 1}, "surprise"),
                                         ({"steps": "many"}, "steps")])
def test_validation_errors_name_the_field(client, upload_id, extra, field):
    r = submit(client, upload_id, **extra)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["field"] == field


def test_missing_or_foreign_upload_is_a_422_on_image(client, upload_id):
    for image, key in (("upl_" + "0" * 24, ALICE), (upload_id, BOB)):
        r = submit(client, image, key=key)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image"


def test_auth_required_and_tenants_isolated(client, upload_id):
    assert client.post("/v1/colorizations", json={"image": upload_id}).status_code == 401
    assert client.get("/v1/jobs", headers=auth("wrong-key-0123456789")).status_code == 401
    job = submit(client, upload_id).json()
    for path in (f"/v1/jobs/{job['id']}", f"/v1/uploads/{upload_id}"):
        assert client.get(path, headers=auth(ALICE)).status_code == 200
        r = client.get(path, headers=auth(BOB))
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(BOB)).status_code == 404
    assert client.get("/v1/jobs", headers=auth(BOB)).json()["items"] == []


def test_idempotency_key_maps_to_one_job(client, upload_id):
    h = {**auth(ALICE), "Idempotency-Key": "abc-1"}
    a = client.post("/v1/colorizations", json={"image": upload_id}, headers=h)
    b = client.post("/v1/colorizations", json={"image": upload_id}, headers=h)
    assert a.status_code == 202 and b.status_code == 200 and a.json()["id"] == b.json()["id"]


def test_list_filters_and_cursor_pagination(client, upload_id):
    ids = [submit(client, upload_id).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth(ALICE))
    seen, cursor = [], None
    while True:
        page = client.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=auth(ALICE)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    canceled = client.get("/v1/jobs", params={"status": "canceled", "kind": "colorize"}, headers=auth(ALICE)).json()
    assert [j["id"] for j in canceled["items"]] == [ids[1]]
    assert client.get("/v1/jobs", params={"status": "bogus"}, headers=auth(ALICE)).status_code == 422


def test_cancel_queued_is_immediate_and_final_jobs_unchanged(client, ctx, upload_id):
    job = submit(client, upload_id).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(ALICE))
    assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["error"]["code"] == "canceled"
    assert ctx.store.claim(job["id"], "w", 30).job is None  # never starts
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(ALICE)).json()
    assert again["status"] == "canceled" and again["finished_at"] == r.json()["finished_at"]


def test_long_poll_returns_on_final_state_and_times_out(client, ctx, upload_id):
    job = submit(client, upload_id).json()
    t0 = time.monotonic()
    r = client.get(f"/v1/jobs/{job['id']}", params={"wait": 0.5}, headers=auth(ALICE))
    assert r.json()["status"] == "queued" and 0.45 <= time.monotonic() - t0 < 3
    threading.Timer(0.3, lambda: ctx.store.request_cancel(job["id"])).start()
    t0 = time.monotonic()
    r = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}, headers=auth(ALICE))
    assert r.json()["status"] == "canceled" and time.monotonic() - t0 < 5
    assert client.get(f"/v1/jobs/{job['id']}", params={"wait": 61}, headers=auth(ALICE)).status_code == 422


def test_events_stream_until_final(client, ctx, upload_id):
    job_id = submit(client, upload_id).json()["id"]

    def worker():
        time.sleep(0.2)
        claimed = ctx.store.claim(job_id, "w", 30).job
        ctx.store.heartbeat(job_id, claimed.attempt, 30, progress=0.5, stage="denoising 1/2")
        ctx.store.finish(job_id, claimed.attempt, "succeeded", result={"images": [], "seed": 1})

    threading.Thread(target=worker).start()
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(ALICE)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = parse_sse(text)
    import json

    states = [json.loads(e["data"])["status"] for e in events if e.get("event") == "job"]
    assert states[0] == "queued" and states[-1] == "succeeded"
    versions = [int(e["id"]) for e in events if "id" in e]
    assert versions == sorted(set(versions))


def test_health_ready_metrics(client, upload_id):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    submit(client, upload_id)
    text = client.get("/metrics").text
    assert 'visionjobs_jobs{kind="colorize",state="queued"} 1.0' in text
    assert 'visionjobs_queue_depth{kind="colorize"} 1.0' in text
    assert 'visionjobs_workers_busy{kind="colorize"} 0.0' in text
    age = float(re.search(r'^visionjobs_queue_oldest_age_seconds\{kind="colorize"\} (\S+)$', text, re.M).group(1))
    assert 0 <= age < 60


def test_signed_file_urls(client, ctx):
    ctx.objects.put("jobs/job_x/output_0.png", b"png-bytes", "image/png")
    url = ctx.objects.signed_url("jobs/job_x/output_0.png", tenant="alice", base_url="http://testserver", ttl_s=60)
    path = url.url.removeprefix("http://testserver")
    r = client.get(path)
    assert r.status_code == 200 and r.content == b"png-bytes" and r.headers["content-type"] == "image/png"
    assert client.get(path, headers=auth(ALICE)).status_code == 200
    assert client.get(path, headers=auth(BOB)).status_code == 404  # another tenant's key
    assert client.get(path.replace("signature=", "signature=0")).status_code == 404
    assert client.get(path.replace("output_0", "output_1")).status_code == 404
    expired = ctx.objects.signed_url("jobs/job_x/output_0.png", tenant="alice", base_url="http://testserver", ttl_s=-5)
    assert client.get(expired.url.removeprefix("http://testserver")).status_code == 404
    for bad in ("/v1/files/../jobs.sqlite3", "/v1/files/%2e%2e/.signing_secret?expires=1&tenant=a&signature=x",
                "/v1/files/jobs/..%2F..%2F.signing_secret?expires=9999999999&tenant=alice&signature=x"):
        assert client.get(bad).status_code == 404
