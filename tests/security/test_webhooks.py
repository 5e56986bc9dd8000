"""Webhooks: unsafe targets refused, signed deliveries retried with backoff, state on the job."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import standardwebhooks
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from service.kinds import KINDS
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes

SECRET = "whsec-0123456789abcdef"


class Receiver:
    """A local endpoint: answers 500 to the first `failures` requests, then 200; keeps them."""

    def __init__(self, failures: int):
        self.requests, self.failures = [], failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = 500 if len(receiver.requests) <= receiver.failures else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


def app_with_worker(tmp_path, **overrides):
    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner

    settings = Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, **overrides)
    ctx = build_context(settings)
    runner = Runner(WorkerSettings(**{**settings.model_dump(), "model_profile": "tiny"}), ctx.store, ctx.objects)
    stopped = threading.Event()
    thread = threading.Thread(target=poll_loop, args=(runner, list(KINDS), stopped, 0.05), daemon=True)
    thread.start()

    class Stop:
        def set(self):
            stopped.set()
            thread.join(timeout=60)

    return TestClient(create_app(ctx, run_reaper=False)), Stop()


def submit(client, webhook):
    image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(64, 64)), "image/png")},
                        headers=auth(ALICE)).json()["id"]
    return client.post("/v1/colorizations", json={"image": image, "steps": 1, "sag_scale": 0, "webhook": webhook},
                       headers=auth(ALICE))


@pytest.mark.parametrize("url,reason", [
    ("http://127.0.0.1:9/hook", "non-public"),
    ("http://localhost:9/hook", "non-public"),
    ("http://10.1.2.3/hook", "non-public"),
    ("http://192.168.0.10/hook", "non-public"),
    ("http://169.254.169.254/latest/meta-data/", "non-public"),
    ("http://[::1]:9/hook", "non-public"),
    ("http://0.0.0.0/hook", "non-public"),
    ("http://no-such-host.invalid/hook", "does not resolve"),
])
def test_unsafe_webhook_targets_are_refused(tmp_path, url, reason):
    client, stop = app_with_worker(tmp_path)
    with client:
        r = submit(client, {"url": url, "secret": SECRET})
    stop.set()
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook.url" and reason in r.json()["detail"]


def test_webhook_schema_limits(tmp_path):
    client, stop = app_with_worker(tmp_path)
    with client:
        bad = [{"url": "ftp://example.com/x", "secret": SECRET}, {"url": "https://example.com", "secret": "short"},
               {"url": "https://example.com", "secret": SECRET, "events": ["exploded"]}]
        fields = [submit(client, hook).json()["errors"][0]["field"] for hook in bad]
    stop.set()
    assert fields == ["webhook.url", "webhook.secret", "webhook.events.0"]


def test_signed_delivery_retries_with_backoff_and_reports_state(tmp_path):
    receiver = Receiver(failures=1)
    client, stop = app_with_worker(tmp_path, webhook_allow_hosts="127.0.0.1", webhook_retry_base_s=0.2)
    with client:
        r = submit(client, {"url": receiver.url, "events": ["running", "succeeded"], "secret": SECRET})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.json()["params"]["webhook"]["secret"] == "***"
        deadline = time.monotonic() + 60
        while True:
            job = client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE)).json()
            deliveries = (job["webhook"] or {}).get("deliveries", {})
            if {d.get("status") for d in deliveries.values()} == {"delivered"} and len(deliveries) == 2:
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    stop.set()
    assert job["status"] == "succeeded"
    assert sum(d["attempts"] for d in deliveries.values()) == 3  # one 500, then two successes
    events, ids = [], {}
    for headers, body in receiver.requests:
        # the Standard Webhooks scheme, checked by its own library
        payload = standardwebhooks.Webhook(SECRET.encode()).verify(body, headers)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(b"another-secret-0123456789").verify(body, headers)
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 120
        ids.setdefault(payload["event"], set()).add(headers["webhook-id"])
        # the deprecated house signature, still sent
        expected = "v1=" + hmac.new(SECRET.encode(), headers["X-Visionjobs-Timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Visionjobs-Signature"], expected)
        assert payload["event"] == headers["X-Visionjobs-Event"] and payload["job"]["id"] == job_id
        assert payload["job"]["params"]["webhook"]["secret"] == "***"
        # the job as of the event, however late the delivery (the first attempt of one failed)
        assert payload["job"]["status"] == payload["event"]
        events.append(payload["event"])
    assert sorted(set(events)) == ["running", "succeeded"] and len(events) == 3
    assert all(len(v) == 1 for v in ids.values()) and len(set().union(*ids.values())) == 2  # one id per delivery


def test_backoff_doubles_and_is_capped():
    from service.webhooks import backoff_s

    assert [backoff_s(n, 2.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0] and backoff_s(30, 2.0) == 600.0
