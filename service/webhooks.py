"""Webhooks: a job may name `webhook: {url, events, secret}`. Transitions into a subscribed
state enqueue a delivery in the job store's outbox atomically; a deliverer thread in the API
process POSTs it, signed, retrying with backoff, and records the delivery state on the job.

Signature: `X-Visionjobs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
`X-Visionjobs-Timestamp: <unix seconds>`; receivers should reject timestamps older than 5 min.
Targets that resolve to loopback, private, link-local (cloud metadata), multicast or reserved
addresses are refused unless VISIONJOBS_WEBHOOK_ALLOW_HOSTS lists the host or its network.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from service.core.errors import field_error

log = logging.getLogger("visionjobs.webhooks")
MAX_ATTEMPTS = 8
TIMEOUT_S = 10.0


class UnsafeTarget(ValueError):
    pass


def _allowed(host: str, addresses: list[ipaddress._BaseAddress], allow: list[str]) -> bool:
    for entry in allow:
        if entry == host:
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(a in net for a in addresses):
            return True
    return False


def check_target(url: str, allow: list[str]) -> list[str]:
    """Resolve the URL's host; raise UnsafeTarget unless every address is public (or allowed)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if parts.scheme not in ("http", "https") or not host:
            raise UnsafeTarget("must be an http(s) URL with a host")
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeTarget(f"host {host!r} does not resolve ({exc.strerror})")
    except (ValueError, UnicodeError) as exc:  # bad port, IPv6 brackets, labels IDNA cannot encode
        raise UnsafeTarget(f"not a valid URL ({exc})")
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if _allowed(host, addresses, allow):
        return [str(a) for a in addresses]
    for a in addresses:
        if not a.is_global or a.is_multicast or a.is_reserved or a.is_link_local or a.is_loopback or a.is_private:
            raise UnsafeTarget(f"host {host!r} resolves to {a}, a non-public address (loopback, private, "
                               "link-local/metadata, multicast or reserved); allow it with VISIONJOBS_WEBHOOK_ALLOW_HOSTS")
    return [str(a) for a in addresses]


def validate_request(webhook: dict | None, allow: list[str]) -> str | None:
    """At submission: refuse unsafe targets (422 naming webhook.url); return the outbox event list."""
    if not webhook:
        return None
    try:
        check_target(webhook["url"], allow)
    except UnsafeTarget as exc:
        raise field_error("webhook.url", str(exc))
    return "," + ",".join(webhook["events"]) + ","


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def backoff_s(attempt: int, base_s: float) -> float:
    return min(base_s * 2 ** (attempt - 1), 600.0)


class WebhookDeliverer(threading.Thread):
    """Delivers due webhooks from the store's outbox. Safe in many processes: the store hands
    each due delivery to exactly one claimant."""

    def __init__(self, ctx, render_job, interval_s: float = 0.5):
        super().__init__(name="visionjobs-webhooks", daemon=True)
        self.ctx, self.render_job, self.interval_s = ctx, render_job, interval_s
        self.stopped = threading.Event()
        self.client = httpx.Client(timeout=TIMEOUT_S, follow_redirects=False)

    def run(self):
        while not self.stopped.wait(self.interval_s):
            try:
                for job_id, event in self.ctx.store.claim_due_webhooks():
                    self.deliver(job_id, event)
            except Exception as exc:  # an outage of the store must not kill the thread
                log.warning("webhook pass failed: %s", exc)

    def stop(self):
        self.stopped.set()

    def deliver(self, job_id: str, event: str) -> dict | None:
        store, settings = self.ctx.store, self.ctx.settings
        job = store.get_job(job_id)
        hook = (job.params or {}).get("webhook") if job else None
        if not hook:
            return None
        state = dict((job.webhook_deliveries or {}).get(event) or {"attempts": 0})
        state["attempts"] += 1
        timestamp = int(time.time())
        body = json.dumps({"event": event, "job": self.render_job(self.ctx, job).model_dump(mode="json")}).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "visionjobs-webhooks",
                   "X-Visionjobs-Event": event, "X-Visionjobs-Delivery": f"{job_id}:{event}",
                   "X-Visionjobs-Timestamp": str(timestamp), "X-Visionjobs-Signature": sign(hook["secret"], timestamp, body)}
        try:
            check_target(hook["url"], settings.webhook_allow_list())  # again: DNS may have changed since submission
            response = self.client.post(hook["url"], content=body, headers=headers)
            state["last_status_code"], state["last_error"] = response.status_code, None
            ok = 200 <= response.status_code < 300
        except (UnsafeTarget, httpx.HTTPError) as exc:
            state["last_status_code"], state["last_error"], ok = None, f"{type(exc).__name__}: {exc}"[:300], False
        if ok:
            state.update(status="delivered", delivered_at=time.time(), next_attempt_at=None)
        elif state["attempts"] >= MAX_ATTEMPTS:
            state.update(status="failed", next_attempt_at=None)
        else:
            delay = backoff_s(state["attempts"], settings.webhook_retry_base_s)
            state.update(status="retrying", next_attempt_at=time.time() + delay)
            store.schedule_webhook(job_id, event, delay)
        store.record_webhook(job_id, event, state)
        log.info("webhook %s %s -> %s (attempt %d)", job_id, event, state["status"], state["attempts"])
        return state
