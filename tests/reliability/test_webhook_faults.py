"""Webhook receivers that misbehave, against real processes (`visionjobs api`, one
`visionjobs worker`, a private Redis): one tenant's receivers stream forever or never answer,
while another tenant's delivery arrives within its normal time and the API's memory stays flat.

Normal time: a delivery is made within a deliverer pass (0.5 s) of the transition, plus the
POST itself; the bound asserted is 3 s. The stuck receivers hold each attempt for the whole
VISIONJOBS_WEBHOOK_TIMEOUT_S (10 s), then retry with backoff.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.helpers import ALICE, BOB, auth, photo, png_bytes
from tests.reliability.conftest import Cluster, RedisServer

pytestmark = pytest.mark.integration
SECRET = "whsec-0123456789abcdef"
MB = 1 << 20


class Receiver:
    """A raw HTTP receiver on 127.0.0.1: `mode` ok | stream (a chunked body that never ends) |
    silent (reads the request, never answers). Records (arrival time, JSON body) per request."""

    def __init__(self, mode: str):
        self.mode, self.requests, self.sent = mode, [], 0
        self.stopped = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536) or b"\0"
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append((time.time(), json.loads(body)))
            if self.mode == "ok":
                conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            elif self.mode == "stream":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n" % 65536 + b"z" * 65536 + b"\r\n"
                while not self.stopped.is_set() and self.sent < 4096 * MB:  # bounded only for the test's sake
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            else:
                self.stopped.wait(120)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stopped.set()
        self.sock.close()


def rss(pid: int) -> int:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webhook-faults")
    server = RedisServer(tmp / "redis", aof=False)
    c = Cluster(tmp, server.url, VISIONJOBS_WEBHOOK_ALLOW_HOSTS="127.0.0.1")
    try:
        c.start_api()
        c.start_workers(1)
        yield c
    finally:
        c.close()
        server.stop()


def submit(c: Cluster, key: str, url: str, events: list[str]) -> dict:
    files = {"file": ("p.png", png_bytes(photo(64, 64)), "image/png")}
    image = httpx.post(f"{c.base}/v1/uploads", files=files, headers=auth(key), timeout=30).json()["id"]
    r = httpx.post(f"{c.base}/v1/colorizations", headers=auth(key), timeout=30, json={
        "image": image, "steps": 1, "sag_scale": 0, "seed": 1,
        "webhook": {"url": url, "events": events, "secret": SECRET}})
    assert r.status_code == 202, r.text
    return r.json()


def wait_final(c: Cluster, job_id: str, key: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{c.base}/v1/jobs/{job_id}", params={"wait": 10}, headers=auth(key), timeout=40).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(job_id)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_stuck_receivers_of_one_tenant_neither_delay_another_nor_grow_the_api(cluster):
    streaming, silent, bobs = Receiver("stream"), Receiver("silent"), Receiver("ok")
    try:
        pid = cluster.api.p.pid
        for url in (streaming.url, silent.url, streaming.url, silent.url):
            submit(cluster, ALICE, url, ["running", "succeeded"])
        deadline = time.monotonic() + 120
        while not (streaming.requests and silent.requests):  # alice's receivers are being served
            assert time.monotonic() < deadline, "alice's deliveries never started"
            time.sleep(0.1)
        baseline, peak = rss(pid), 0
        job = submit(cluster, BOB, bobs.url, ["succeeded"])
        final = wait_final(cluster, job["id"], BOB)
        assert final["status"] == "succeeded", final
        sample_until = time.monotonic() + 15  # alice's receivers keep streaming and hanging meanwhile
        while time.monotonic() < sample_until:
            peak = max(peak, rss(pid))
            time.sleep(0.2)
        assert bobs.requests, "bob's delivery never arrived"
        arrived, body = bobs.requests[0]
        assert body["event"] == "succeeded" and body["job"]["id"] == job["id"]
        latency = arrived - _ts(final["finished_at"])
        growth = peak - baseline
        print(f"bob's delivery {latency:.2f} s after his job finished; API RSS growth {growth / MB:.1f} MB; "
              f"the streaming receiver got to send {streaming.sent / MB:.1f} MB")
        assert latency < 3.0, latency
        assert growth < 50 * MB, growth / MB
        state = wait_final(cluster, job["id"], BOB)["webhook"]["deliveries"]["succeeded"]
        assert state["status"] == "delivered" and state["attempts"] == 1, state
    finally:
        for r in (streaming, silent, bobs):
            r.close()
