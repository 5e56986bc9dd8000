"""URL and data: inputs wherever an upload id is accepted: fetched into an upload through the
hardened egress path (a local server allow-listed for the test; private targets refused by
default), under the upload route's budgets, every failure a 4xx naming the field."""
from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from tests.helpers import ALICE, BOB, KEYS, auth, photo, png_bytes

PROBLEM = "application/problem+json"
PNG = png_bytes(photo(40, 30))


@pytest.fixture(scope="module")
def server():
    """A local file server: /photo.png, /big (larger than the upload limit), /missing (404)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/photo.png":
                body = PNG
            elif self.path.startswith("/slow"):  # a server that answers after 3 s
                time.sleep(3)
                body = PNG
            elif self.path == "/big":
                body = b"\x89PNG" + b"0" * 300_000
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def make_client(tmp_path, **settings):
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, max_upload_bytes=200_000, redis_url=None,
                                 s3_bucket=None, **settings))
    return TestClient(create_app(ctx, run_reaper=False))


@pytest.fixture
def allowed(tmp_path):
    with make_client(tmp_path, url_input_allow_hosts="127.0.0.1") as c:
        yield c


def colorize(client, image, **extra):
    return client.post("/v1/colorizations", json={"image": image, **extra}, headers=auth(ALICE))


def uploaded(client, upload_id: str) -> dict:
    r = client.get(f"/v1/uploads/{upload_id}", headers=auth(ALICE))
    assert r.status_code == 200
    return r.json()


def test_a_url_input_from_an_allow_listed_server_becomes_an_upload(allowed, server):
    r = colorize(allowed, f"{server}/photo.png", exemplar=f"{server}/photo.png")
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert params["image"].startswith("upl_") and params["exemplar"] == params["image"]  # fetched once
    up = uploaded(allowed, params["image"])
    assert up["filename"] == "photo.png" and up["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert (up["width"], up["height"]) == (40, 30)


def test_a_data_uri_input_becomes_an_upload(allowed):
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    r = colorize(allowed, uri)
    assert r.status_code == 202, r.text
    assert uploaded(allowed, r.json()["params"]["image"])["sha256"] == hashlib.sha256(PNG).hexdigest()


def test_private_targets_are_refused_by_default_naming_the_field(tmp_path, server):
    with make_client(tmp_path) as default:
        for url in (f"{server}/photo.png", "http://169.254.169.254/latest/meta-data", "https://10.1.2.3/x.png"):
            r = colorize(default, url)
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
            error = r.json()["errors"][0]
            assert error["field"] == "image" and "VISIONJOBS_URL_INPUT_ALLOW_HOSTS" in error["message"]


def test_fetch_failures_and_budgets_are_4xx_naming_the_field(allowed, server):
    r = colorize(allowed, f"{server}/missing")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image" and "404" in r.json()["detail"]
    r = colorize(allowed, "upl_" + "0" * 24, exemplar=f"{server}/big")
    assert r.status_code == 413 and r.json()["errors"][0] == {"field": "exemplar", "message": "too large",
                                                             "limit": 200_000}
    r = colorize(allowed, "data:image/png;base64,!!!not-base64")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image"
    r = colorize(allowed, "data:text/plain,hello")
    assert r.status_code == 415 and r.json()["errors"][0]["field"] == "image"


def test_list_inputs_name_the_item_and_a_request_has_a_url_budget(tmp_path, server):
    with make_client(tmp_path, url_input_allow_hosts="127.0.0.1", max_url_inputs=2) as c:
        body = {"model_id": "anm_" + "0" * 24, "images": ["upl_" + "1" * 24, f"{server}/missing"]}
        r = c.post("/v1/anomaly-scores", json=body, headers=auth(ALICE))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "images.1"
        body["images"] = [f"{server}/photo.png?{i}" for i in range(3)]
        r = c.post("/v1/anomaly-scores", json=body, headers=auth(ALICE))
        assert r.status_code == 422 and r.json()["errors"][0] == {
            "field": "images.2", "message": r.json()["errors"][0]["message"], "limit": 2}


def test_a_prompt_that_looks_like_a_url_is_not_fetched(allowed, server):
    up = allowed.post("/v1/uploads", files={"file": ("p.png", PNG, "image/png")}, headers=auth(ALICE)).json()
    r = colorize(allowed, up["id"], prompt=f"{server}/missing")
    assert r.status_code == 202 and r.json()["params"]["prompt"] == f"{server}/missing"


def test_a_retry_with_the_same_key_and_url_inputs_gets_its_job(allowed, server):
    # the retry fetches the URL again (a new upload id): the key is bound to what the client sent
    body = {"image": f"{server}/photo.png"}
    first = allowed.post("/v1/colorizations", json=body, headers={**auth(ALICE), "Idempotency-Key": "url-retry"})
    again = allowed.post("/v1/colorizations", json=body, headers={**auth(ALICE), "Idempotency-Key": "url-retry"})
    assert first.status_code == 202 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    other = allowed.post("/v1/colorizations", json={"image": f"{server}/photo.png", "prompt": "red"},
                         headers={**auth(ALICE), "Idempotency-Key": "url-retry"})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


def test_url_inputs_count_against_the_uploads_quota(tmp_path, server):
    with make_client(tmp_path, url_input_allow_hosts="127.0.0.1", max_tenant_upload_bytes=len(PNG) + 10) as c:
        assert colorize(c, f"{server}/photo.png").status_code == 202
        r = colorize(c, "data:image/png;base64," + base64.b64encode(PNG).decode())
        assert r.status_code == 429 and r.json()["code"] == "storage_quota_exceeded", r.text
        assert r.json()["errors"][0]["field"] == "image" and r.json()["detail"].startswith("image: ")


def test_one_tenant_cannot_hold_every_url_fetch_slot(tmp_path, server):
    # the egress pool has 4 threads per process: a key fetches at most 2 URLs at once, so another
    # key's URL input is fetched at once while one key's slow URLs hold their slots
    with make_client(tmp_path, url_input_allow_hosts="127.0.0.1") as c:
        answers = {}

        def slow(i):
            answers[i] = colorize(c, f"{server}/slow/{i}.png")

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(3)]
        [t.start() for t in threads]
        time.sleep(1.0)  # alice's fetches are under way
        began = time.monotonic()
        r = c.post("/v1/colorizations", json={"image": f"{server}/photo.png"}, headers=auth(BOB))
        assert r.status_code == 202 and time.monotonic() - began < 1.5, r.text
        [t.join() for t in threads]
        codes = sorted(a.status_code for a in answers.values())
        assert codes == [202, 202, 429], [a.text for a in answers.values()]
        busy = next(a for a in answers.values() if a.status_code == 429)
        assert busy.json()["code"] == "fetch_busy" and busy.json()["errors"][0]["field"] == "image"
        assert "Retry-After" in busy.headers
