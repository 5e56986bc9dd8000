"""Abuse limits: per-key request rate and concurrent-job quota, answered with 429 + Retry-After,
and request body sizes enforced while the body streams in (before it is all in memory)."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis
from fastapi import HTTPException

from service.core.errors import ApiError
from service.store.base import StoreUnavailable
from service.store.redis_store import refusal

log = logging.getLogger("visionjobs.limits")

RATE_WINDOW_S = 60
LEASE_SHARE = 100  # a process leases 1/LEASE_SHARE of a key's limit per round trip

# KEYS[1]: the key's window counter. ARGV: tokens wanted, the limit, ttl. Returns tokens granted.
_LEASE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return grant
"""


@dataclass
class _Bucket:
    window: int
    tokens: int = 0
    exhausted: bool = False           # the window's budget is all handed out: refuse locally
    lease: asyncio.Future | None = None  # one lease round trip in flight per key


class RateLimiter:
    """Fixed one-minute windows per key, counted without a Redis round trip per request.

    Each API process leases tokens from the key's window counter in Redis in chunks of
    `chunk` (1 % of the limit) with one atomic script, and spends them locally. Accuracy,
    across any number of API processes: never more than `per_minute` requests per key and
    window (the counter never grants past the limit); a process may refuse early while other
    processes still hold unspent tokens, at most (processes - 1) x chunk per window. A burst of
    up to 2x the limit can straddle a window edge (fixed windows). Without Redis (embedded,
    one process) the counting is exact. Windows follow each host's clock."""

    def __init__(self, per_minute: int, redis_client=None, prefix: str = "vj:", *, chunk: int | None = None,
                 clock=time.time):
        self.per_minute, self.p, self.clock = per_minute, prefix, clock
        self.chunk = chunk or max(1, per_minute // LEASE_SHARE)
        self._buckets: dict[str, _Bucket] = {}
        self._script = None
        self.leases = 0  # round trips to Redis so far
        self.bind(redis_client, prefix)

    def bind(self, redis_client, prefix: str | None = None) -> None:
        """Use this redis.asyncio client (None: count in-process only)."""
        self.r = redis_client
        self.p = prefix or self.p
        self._script = redis_client.register_script(_LEASE) if redis_client is not None else None
        self._buckets.clear()

    async def hit(self, tenant: str) -> float | None:
        """None when allowed; else seconds until the window resets."""
        if self.per_minute <= 0:
            return None
        now = self.clock()
        window = int(now // RATE_WINDOW_S)
        bucket = self._buckets.get(tenant)
        if bucket is None or bucket.window != window:
            if len(self._buckets) > 10_000:  # keys of past windows
                self._buckets = {k: b for k, b in self._buckets.items() if b.window == window}
            bucket = self._buckets[tenant] = _Bucket(window)
        while bucket.tokens <= 0:
            if bucket.exhausted:
                return (window + 1) * RATE_WINDOW_S - now
            await self._lease(tenant, bucket)
        bucket.tokens -= 1
        return None

    async def _lease(self, tenant: str, bucket: _Bucket) -> None:
        if self._script is None:
            bucket.tokens, bucket.exhausted = self.per_minute, True  # one process: the whole window
            return
        if bucket.lease is not None:  # another request of this key is fetching: share its answer
            await asyncio.shield(bucket.lease)
            return
        bucket.lease = asyncio.get_running_loop().create_future()
        try:
            key = f"{self.p}rate:{tenant}:{bucket.window}"
            granted = int(await self._script(keys=[key], args=[self.chunk, self.per_minute, RATE_WINDOW_S * 2]))
            self.leases += 1
        except redis.ResponseError as exc:
            if refusal(exc) is None:
                raise
            # Redis refuses writes (full): count this window in-process, so reads keep being served
            log.warning("rate counter not writable (%s): counting in this process", exc)
            bucket.tokens += self.chunk
            bucket.lease.set_result(None)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            bucket.lease.set_exception(StoreUnavailable(f"redis unreachable: {exc}"))
            bucket.lease.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        else:
            bucket.tokens += granted
            bucket.exhausted = granted < self.chunk
            bucket.lease.set_result(None)
        finally:
            bucket.lease = None


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
                           "errors": [{"field": field, "message": "too large", "limit": limit}],
                           "errors_total": 1}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
