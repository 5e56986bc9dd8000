"""Checking a webhook delivery on the receiving side.

The API signs each delivery: ``X-Visionjobs-Timestamp: <unix seconds>`` and
``X-Visionjobs-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Optional, Union

from visionjobs_client.errors import VisionJobsError

SIGNATURE_HEADER = "X-Visionjobs-Signature"
TIMESTAMP_HEADER = "X-Visionjobs-Timestamp"


class WebhookSignatureError(VisionJobsError):
    """The delivery is not authentic (wrong or missing signature) or too old (a replay)."""


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    return "v1=" + hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_webhook(secret: str, body: Union[bytes, str], headers: Mapping[str, str], *, tolerance_s: float = 300.0,
                   now: Optional[float] = None) -> Any:
    """Check a delivery's signature and age; return its JSON body. ``body`` must be the raw
    request body (before any JSON parsing); ``headers`` any mapping (matched case-insensitively).
    Raises ``WebhookSignatureError``."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = {k.lower(): v for k, v in headers.items()}
    signature, stamp = lower.get(SIGNATURE_HEADER.lower()), lower.get(TIMESTAMP_HEADER.lower())
    if not signature or not stamp or not stamp.strip().isdigit():
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookSignatureError(f"timestamp {timestamp} is outside the {tolerance_s:g} s tolerance")
    expected = sign_webhook(secret, timestamp, raw)
    if not any(hmac.compare_digest(expected, s.strip()) for s in signature.split(",")):
        raise WebhookSignatureError("signature mismatch")
    return json.loads(raw)
