"""Webhooks: a job may name `webhook: {url, events, secret}`. Transitions into a subscribed
state enqueue a delivery in the job store's outbox atomically; deliverers in the API process
POST it, signed, retrying with backoff, and record the delivery state on the job.

Signed on the Standard Webhooks scheme (https://www.standardwebhooks.com): `webhook-id` (one per
delivery, the same on every retry), `webhook-timestamp` (unix seconds) and `webhook-signature:
v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`; the key is the secret's UTF-8 bytes, or
for a `whsec_<base64>` secret (the standard's own form) the bytes it encodes. Any Standard Webhooks
library verifies it (`standardwebhooks.Webhook(key).verify(body, headers)`). Deprecated, sent for
one more version: `X-Visionjobs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

The body is `{event, job}` with the job as it was when it entered the event's state (a snapshot
the store writes with the transition), not as it is when the delivery is sent.

Every attempt goes through service/egress.py: resolved once, connected to exactly the checked
address, non-public destinations refused (unless VISIONJOBS_WEBHOOK_ALLOW_HOSTS lists the host
or its network), no environment proxies, one total deadline for the answer's status line; its body is not read.

Deliveries run on a pool of VISIONJOBS_WEBHOOK_WORKERS threads with at most
VISIONJOBS_WEBHOOK_TENANT_CONCURRENCY in flight per tenant: a due delivery of a tenant at its
cap goes back to the outbox for BOUNCE_S, so one tenant's slow receivers hold at most their own
slots and never delay another tenant's deliveries.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import queue
import threading
import time

from service import egress
from service.core.errors import field_error

log = logging.getLogger("visionjobs.webhooks")
MAX_ATTEMPTS = 8
BOUNCE_S = 2.0        # a due delivery whose tenant is at its cap waits in the outbox this long
SCAN_LIMIT = 500      # due deliveries looked at per pass (a pass that reaches it runs again at once)
CLAIM_BATCH = 20


def webhook_policy(settings) -> egress.EgressPolicy:
    return egress.EgressPolicy(allow=tuple(settings.webhook_allow_list()), timeout_s=settings.webhook_timeout_s,
                               resolve_timeout_s=min(5.0, settings.webhook_timeout_s))


def validate_request(webhook: dict | None, allow: list[str]) -> str | None:
    """At submission: refuse unsafe targets (422 naming webhook.url); return the outbox event list."""
    if not webhook:
        return None
    try:
        egress.resolve(webhook["url"], egress.EgressPolicy(allow=tuple(allow)))
    except egress.EgressRefused as exc:
        raise field_error("webhook.url", str(exc))
    return "," + ",".join(webhook["events"]) + ","


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The deprecated house signature (X-Visionjobs-Signature), kept for one version."""
    return "v1=" + hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signing_key(secret: str) -> bytes:
    """The Standard Webhooks key: a `whsec_<base64>` secret's bytes, else the secret's UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):] + "==")
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(signing_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, body: bytes, *, event: str, delivery_id: str,
                   timestamp: int | None = None) -> dict[str, str]:
    """Every header of a delivery: the one place that decides how deliveries are signed."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"Content-Type": "application/json", "User-Agent": "visionjobs-webhooks",
            "webhook-id": delivery_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(secret, delivery_id, timestamp, body),
            "X-Visionjobs-Event": event, "X-Visionjobs-Delivery": delivery_id,
            # deprecated (one more version): the house scheme, for receivers not yet on the standard
            "X-Visionjobs-Timestamp": str(timestamp), "X-Visionjobs-Signature": sign(secret, timestamp, body)}


def backoff_s(attempt: int, base_s: float) -> float:
    return min(base_s * 2 ** (attempt - 1), 600.0)


class WebhookDeliverer(threading.Thread):
    """Claims due deliveries from the store's outbox and hands them to a pool of deliverer
    threads, per-tenant capped. Safe in many processes: the store hands each due delivery to
    exactly one claimant; at most the pool's size is claimed and not yet delivered at a time."""

    def __init__(self, ctx, render_job, interval_s: float = 0.5):
        super().__init__(name="visionjobs-webhooks", daemon=True)
        self.ctx, self.render_job, self.interval_s = ctx, render_job, interval_s
        settings = ctx.settings
        self.policy = webhook_policy(settings)
        self.size, self.per_tenant = settings.webhook_workers, settings.webhook_tenant_concurrency
        self.stopped = threading.Event()
        self._work: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._tenants: dict[str, int] = {}

    # --- the claimer ---
    def run(self):
        for i in range(self.size):
            threading.Thread(target=self._deliver_loop, name=f"visionjobs-webhooks-{i}", daemon=True).start()
        busy = False
        while not self.stopped.wait(0 if busy else self.interval_s):
            try:
                busy = self.dispatch_due()
            except Exception as exc:  # an outage of the store must not kill the thread
                log.warning("webhook pass failed: %s", exc)
                busy = False

    def stop(self):
        self.stopped.set()
        for _ in range(self.size):
            self._work.put(None)

    def in_flight(self, tenant: str | None = None) -> int:
        with self._lock:
            return self._in_flight if tenant is None else self._tenants.get(tenant, 0)

    def dispatch_due(self) -> bool:
        """One pass over the outbox; True when it stopped at SCAN_LIMIT (more may be due)."""
        store, scanned = self.ctx.store, 0
        while scanned < SCAN_LIMIT:
            free = self.size - self.in_flight()
            if free <= 0:
                return False
            due = store.claim_due_webhooks(limit=min(free, CLAIM_BATCH))
            for i, (job_id, event) in enumerate(due):
                scanned += 1
                try:
                    job = store.get_job(job_id)
                except Exception:
                    for rest in due[i:]:  # claimed but not handed out: back to the outbox, not lost
                        store.schedule_webhook(*rest, BOUNCE_S)
                    raise
                if job is None:
                    continue
                if not self._take(job.tenant):
                    store.schedule_webhook(job_id, event, BOUNCE_S)  # tenant at its cap (or pool full)
                    continue
                self._work.put((job, event))
            if len(due) < min(free, CLAIM_BATCH):
                return False
        return True

    def _take(self, tenant: str) -> bool:
        with self._lock:
            if self._in_flight >= self.size or self._tenants.get(tenant, 0) >= self.per_tenant:
                return False
            self._in_flight += 1
            self._tenants[tenant] = self._tenants.get(tenant, 0) + 1
            return True

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._in_flight -= 1
            left = self._tenants[tenant] - 1
            if left:
                self._tenants[tenant] = left
            else:
                del self._tenants[tenant]

    # --- the deliverers ---
    def _deliver_loop(self):
        while (item := self._work.get()) is not None:
            job, event = item
            try:
                self.deliver(job.id, event, job=job)
            except Exception as exc:
                log.warning("webhook %s %s failed before it was recorded: %s", job.id, event, exc)
                try:  # put it back rather than lose it
                    self.ctx.store.schedule_webhook(job.id, event, self.ctx.settings.webhook_retry_base_s)
                except Exception:
                    pass
            finally:
                self._release(job.tenant)

    def deliver(self, job_id: str, event: str, job=None) -> dict | None:
        store, settings = self.ctx.store, self.ctx.settings
        job = store.get_job(job_id) if job is None else job
        hook = (job.params or {}).get("webhook") if job else None
        if not hook:
            return None
        state = dict((job.webhook_deliveries or {}).get(event) or {"attempts": 0})
        state["attempts"] += 1
        # the job as of the event (deliveries enqueued before snapshots existed: as it is now);
        # the delivery state is the live job's, the snapshot's is from before this delivery began
        snapshot = store.webhook_snapshot(job_id, event) or job
        snapshot.webhook_deliveries = job.webhook_deliveries
        body = json.dumps({"event": event, "job": self.render_job(self.ctx, snapshot).model_dump(mode="json")}).encode()
        headers = signed_headers(hook["secret"], body, event=event, delivery_id=f"{job_id}:{event}")
        try:
            # resolved and checked again (DNS may have changed since submission); the status line is
            # the receiver's answer: its body is never read
            with egress.open_stream("POST", hook["url"], policy=self.policy, content=body, headers=headers) as response:
                state["last_status_code"], state["last_error"] = response.status_code, None
                ok = 200 <= response.status_code < 300
        except egress.EgressRefused as exc:
            state["last_status_code"], state["last_error"], ok = None, f"refused: {exc}"[:300], False
        except egress.EgressError as exc:
            state["last_status_code"], state["last_error"], ok = None, str(exc)[:300], False
        if ok:
            state.update(status="delivered", delivered_at=time.time(), next_attempt_at=None)
        elif state["attempts"] >= MAX_ATTEMPTS:
            state.update(status="failed", next_attempt_at=None)
        else:
            delay = backoff_s(state["attempts"], settings.webhook_retry_base_s)
            state.update(status="retrying", next_attempt_at=time.time() + delay)
            store.schedule_webhook(job_id, event, delay)
        store.record_webhook(job_id, event, state)
        if state["status"] != "retrying":
            store.drop_webhook_snapshot(job_id, event)
        log.info("webhook %s %s -> %s (attempt %d)", job_id, event, state["status"], state["attempts"])
        return state
