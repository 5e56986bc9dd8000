"""Checking a webhook delivery on the receiving side.

Deliveries are signed on the Standard Webhooks scheme (https://www.standardwebhooks.com):
``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature: v1,<base64
HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>``, the key being the secret's UTF-8 bytes (or,
for a ``whsec_<base64>`` secret, the bytes it encodes). The signature is computed here by the
``standardwebhooks`` package itself.

Deprecated, checked only when a delivery has no ``webhook-signature`` (servers before the
standard; the server still sends it for one more version): ``X-Visionjobs-Timestamp`` and
``X-Visionjobs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Union

from standardwebhooks import Webhook as _StandardWebhook

from visionjobs_client.errors import VisionJobsError

ID_HEADER, STANDARD_TIMESTAMP_HEADER, STANDARD_SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
SIGNATURE_HEADER = "X-Visionjobs-Signature"  # deprecated
TIMESTAMP_HEADER = "X-Visionjobs-Timestamp"  # deprecated


class WebhookSignatureError(VisionJobsError):
    """The delivery is not authentic (wrong or missing signature) or too old (a replay)."""


def signing_key(secret: str) -> bytes:
    """The Standard Webhooks key of a webhook secret (as the server derives it)."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):] + "==")
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign_webhook(secret: str, timestamp: int, body: bytes, msg_id: Optional[str] = None) -> str:
    """The signature header value for ``body`` sent at ``timestamp``: ``webhook-signature`` when
    ``msg_id`` is given, else the deprecated ``X-Visionjobs-Signature``."""
    if msg_id is not None:
        when = datetime.fromtimestamp(int(timestamp), tz=timezone.utc)
        return _StandardWebhook(signing_key(secret)).sign(msg_id, when, body.decode())
    return "v1=" + hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def _fresh(stamp: Optional[str], tolerance_s: float, now: Optional[float], header: str) -> int:
    if not stamp or not stamp.strip().isdigit():
        raise WebhookSignatureError(f"missing or malformed {header}")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookSignatureError(f"timestamp {timestamp} is outside the {tolerance_s:g} s tolerance")
    return timestamp


def verify_webhook(secret: str, body: Union[bytes, str], headers: Mapping[str, str], *, tolerance_s: float = 300.0,
                   now: Optional[float] = None) -> Any:
    """Check a delivery's signature and age; return its JSON body. ``body`` must be the raw
    request body (before any JSON parsing); ``headers`` any mapping (matched case-insensitively).
    Raises ``WebhookSignatureError``."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = {k.lower(): v for k, v in headers.items()}
    if STANDARD_SIGNATURE_HEADER in lower:
        msg_id = lower.get(ID_HEADER)
        if not msg_id:
            raise WebhookSignatureError(f"missing {ID_HEADER}")
        timestamp = _fresh(lower.get(STANDARD_TIMESTAMP_HEADER), tolerance_s, now, STANDARD_TIMESTAMP_HEADER)
        try:
            expected = sign_webhook(secret, timestamp, raw, msg_id=msg_id)
        except UnicodeDecodeError:
            raise WebhookSignatureError("the body is not UTF-8 JSON") from None
        if not any(hmac.compare_digest(expected, s) for s in lower[STANDARD_SIGNATURE_HEADER].split(" ") if s):
            raise WebhookSignatureError("signature mismatch")
        return json.loads(raw)
    signature = lower.get(SIGNATURE_HEADER.lower())
    if not signature:
        raise WebhookSignatureError(f"missing {STANDARD_SIGNATURE_HEADER} (or the deprecated {SIGNATURE_HEADER})")
    timestamp = _fresh(lower.get(TIMESTAMP_HEADER.lower()), tolerance_s, now, TIMESTAMP_HEADER)
    expected = sign_webhook(secret, timestamp, raw)
    if not any(hmac.compare_digest(expected, s.strip()) for s in signature.split(",")):
        raise WebhookSignatureError("signature mismatch")
    return json.loads(raw)
