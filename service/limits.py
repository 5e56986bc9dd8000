"""Abuse limits: per-key request rate and concurrent-job quota, answered with 429 + Retry-After,
and request body sizes enforced while the body streams in (before it is all in memory)."""
from __future__ import annotations

import math
import threading
import time

import redis
from fastapi import HTTPException

from service.core.errors import ApiError
from service.store.base import StoreUnavailable

RATE_WINDOW_S = 60


class RateLimiter:
    """Fixed one-minute windows per tenant (a burst of up to 2x the limit can straddle a window
    edge; simple, and one Redis round trip per request). `redis` None: in-process counters."""

    def __init__(self, per_minute: int, redis_client=None, prefix: str = "vj:"):
        self.per_minute, self.r, self.p = per_minute, redis_client, prefix
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, tenant: str) -> float | None:
        """None when allowed; else seconds until the window resets."""
        if self.per_minute <= 0:
            return None
        now = time.time()
        window = int(now // RATE_WINDOW_S)
        if self.r is not None:
            key = f"{self.p}rate:{tenant}:{window}"
            pipe = self.r.pipeline()
            pipe.incr(key)
            pipe.expire(key, RATE_WINDOW_S * 2)
            try:
                count = pipe.execute()[0]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        else:
            with self._lock:
                count = self._counts.get((tenant, window), 0) + 1
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
                self._counts[(tenant, window)] = count
        if count > self.per_minute:
            return (window + 1) * RATE_WINDOW_S - now
        return None


def too_many(detail: str, retry_after: float, code: str) -> ApiError:
    return ApiError(429, "Too many requests", detail, code=code,
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing passes it through (it turns other errors into 400)."""

    def __init__(self, field: str, limit: int):
        super().__init__(413, f"{field}: the request body exceeds {limit} bytes")
        self.code, self.errors = "payload_too_large", [{"field": field, "message": "too large", "limit": limit}]


class BodyLimitMiddleware:
    """413 for bodies over the limit, counted as they arrive (chunked bodies too): uploads get
    `upload_limit` (+ multipart overhead), everything else `json_limit`."""

    def __init__(self, app, json_limit: int, upload_limit: int, upload_prefix: str = "/v1/uploads"):
        self.app, self.json_limit, self.upload_limit, self.upload_prefix = app, json_limit, upload_limit, upload_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        is_upload = scope["path"].startswith(self.upload_prefix)
        # uploads: the file limit plus room for the multipart envelope; the route checks the file exactly
        stated = self.upload_limit if is_upload else self.json_limit
        limit = stated + 64 * 1024 if is_upload else stated
        field = "file" if is_upload else "body"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(scope, send, field, stated)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(field, stated)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, send, field, stated)

    async def _reject(self, scope, send, field: str, limit: int):
        import json

        body = json.dumps({"type": "https://visionjobs.dev/problems/payload_too_large", "title": "Payload too large",
                           "status": 413, "detail": f"{field}: the request body exceeds {limit} bytes",
                           "instance": scope["path"], "code": "payload_too_large",
                           "errors": [{"field": field, "message": "too large", "limit": limit}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
