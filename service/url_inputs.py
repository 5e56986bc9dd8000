"""Inputs given as URLs (`https://...`) or `data:` URIs wherever an upload id is accepted:
fetched by the API into an upload before the job is accepted, so workers only ever read uploads.

- The fields that take an input are declared on each request model (`INPUTS`: dotted paths,
  `*` for every item of a list), so a prompt that happens to start with https:// is never fetched.
- A URL leaves through the hardened egress path the webhooks use (service/egress.py): resolved
  once, non-public destinations refused unless VISIONJOBS_URL_INPUT_ALLOW_HOSTS lists them, no
  proxies, no redirects, one total deadline (VISIONJOBS_URL_INPUT_TIMEOUT_S), the body read up
  to VISIONJOBS_MAX_UPLOAD_BYTES and no further.
- Fetched bytes (and decoded data: URIs) go through the upload route's own check (type sniffed
  from the bytes, decode budget, structure limits), so a URL input costs what an upload costs.
- At most VISIONJOBS_MAX_URL_INPUTS per request; every failure is a 4xx naming the field.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from pydantic import BaseModel

from service import quotas
from service.core.errors import ApiError, field_error
from service.egress import EgressError, EgressPolicy, EgressRefused, open_stream
from service.offload import POOLS
from service.uploads import DecodeGate, check_upload

_URL = re.compile(r"^https?://", re.IGNORECASE)
_DATA = re.compile(r"^data:([^,]*),", re.IGNORECASE | re.DOTALL)


def is_remote(value: Any) -> bool:
    return isinstance(value, str) and bool(_URL.match(value) or _DATA.match(value))


def _slots(doc: Any, path: list[str], prefix: str):
    """(container, key, dotted field) of every value at `path` in `doc`."""
    if not path or doc is None:
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(doc, list):
            for i in range(len(doc)):
                yield from (_slots(doc[i], rest, f"{prefix}.{i}") if rest else [(doc, i, f"{prefix}.{i}")])
        return
    if isinstance(doc, dict) and head in doc:
        field = f"{prefix}.{head}" if prefix else head
        yield from (_slots(doc[head], rest, field) if rest else [(doc, head, field)])


def _too_large(field: str, limit: int) -> ApiError:
    return ApiError(413, "Payload too large", f"{field}: the input is larger than the limit of {limit} bytes "
                    "(VISIONJOBS_MAX_UPLOAD_BYTES)", code="payload_too_large",
                    errors=[{"field": field, "message": "too large", "limit": limit}])


def decode_data_uri(value: str, field: str, limit: int) -> bytes:
    head = _DATA.match(value)
    payload = value[head.end():]
    try:
        if head.group(1).lower().endswith(";base64"):
            data = base64.b64decode(payload, validate=True)
        else:
            data = unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise field_error(field, f"not a readable data: URI ({exc})")
    if len(data) > limit:
        raise _too_large(field, limit)
    return data


def fetch_url(url: str, field: str, policy: EgressPolicy, limit: int) -> bytes:
    """GET `url` through the egress path (blocking: call it off the event loop)."""
    try:
        with open_stream("GET", url, policy=policy, headers={"Accept": "*/*"}) as response:
            if response.status_code != 200:
                raise field_error(field, f"fetching the URL answered HTTP {response.status_code} (200 expected; "
                                         "redirects are not followed)")
            declared = dict((k.lower(), v) for k, v in response.headers).get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(field, limit)
            data, truncated = response.read(limit)
    except EgressRefused as exc:
        raise field_error(field, f"this URL is not fetched: {exc}")
    except EgressError as exc:
        raise field_error(field, f"the URL could not be fetched: {exc}")
    if truncated:
        raise _too_large(field, limit)
    return data


class FetchGate(DecodeGate):
    """The egress pool's threads, shared fairly: a key holds at most half of them, so one key's
    slow URLs never leave another key's inputs waiting for a thread (the decode gate's counting,
    with its own answers)."""

    def _busy(self, full: str, wait_s: float) -> ApiError:
        # "file:" as the upload errors say it: fetch_inputs renames it to the input's field
        if full == "tenant":
            return ApiError(429, "Too many requests", f"file: this key already has {self.per_tenant} URL inputs "
                            "being fetched; retry shortly", code="fetch_busy", headers={"Retry-After": "2"},
                            errors=[{"field": "file", "message": "too many concurrent URL fetches",
                                     "limit": self.per_tenant}])
        return ApiError(503, "Service unavailable", f"file: {self.per_process} URL inputs are being fetched and "
                        f"none finished within {wait_s:g} s; retry shortly", code="fetch_busy",
                        headers={"Retry-After": "2"},
                        errors=[{"field": "file", "message": "URL fetcher busy", "limit": self.per_process}])

    async def acquire(self, tenant: str, wait_s: float) -> None:
        if self.in_use(tenant) >= self.per_tenant:  # the key's own fetches: refused now, not queued
            raise self._busy("tenant", wait_s)
        await super().acquire(tenant, wait_s)


FETCHES = FetchGate(per_process=POOLS["egress"], per_tenant=max(1, POOLS["egress"] // 2))


def _filename(value: str) -> str:
    if _DATA.match(value):
        return "data"
    name = urlsplit(value).path.rsplit("/", 1)[-1]
    return name or "download"


async def fetch_inputs(ctx, tenant: str, body: BaseModel) -> BaseModel:
    """`body` with every URL or data: input replaced by the id of an upload of its bytes."""
    paths = getattr(type(body), "INPUTS", ())
    doc = body.model_dump()
    remote = [(c, k, f) for path in paths for c, k, f in _slots(doc, path.split("."), "") if is_remote(c[k])]
    if not remote:
        return body
    s = ctx.settings
    if len(remote) > s.max_url_inputs:
        raise field_error(remote[s.max_url_inputs][2], f"{len(remote)} URL or data: inputs; a request may give at "
                          f"most {s.max_url_inputs} (VISIONJOBS_MAX_URL_INPUTS): upload the rest first",
                          limit=s.max_url_inputs)
    policy = EgressPolicy(allow=tuple(s.url_input_allow_list()), timeout_s=s.url_input_timeout_s,
                          resolve_timeout_s=min(5.0, s.url_input_timeout_s), allow_setting="VISIONJOBS_URL_INPUT_ALLOW_HOSTS")
    fetched: dict[str, str] = {}  # the same URL twice in one request is fetched once
    for container, key, field in remote:
        value = container[key]
        if value not in fetched:
            if _DATA.match(value):
                data = decode_data_uri(value, field, s.max_upload_bytes)
            else:
                try:
                    await FETCHES.acquire(tenant, wait_s=s.url_input_timeout_s)
                except ApiError as exc:
                    raise _renamed(exc, field)
                try:
                    data = await ctx.offload("egress", fetch_url, value, field, policy, s.max_upload_bytes)
                finally:
                    FETCHES.release(tenant)
            try:
                rec = await check_upload(ctx, tenant, _filename(value), data)
            except ApiError as exc:  # the upload check names `file`: here the input is `field`
                raise _renamed(exc, field)
            # a fetched input is an upload: it counts against the uploads quota like one
            await quotas.charge(ctx, tenant, quotas.UPLOADS, rec.id, rec.size, s.retention_s, field)
            try:
                await ctx.offload("storage", ctx.objects.put, rec.key, data, rec.content_type)
                await ctx.astore.put_upload(rec)
            except BaseException:
                await ctx.astore.release_bytes(tenant, quotas.UPLOADS, rec.id)
                raise
            fetched[value] = rec.id
        container[key] = fetched[value]
    return type(body).model_validate(doc)


def _renamed(exc: ApiError, field: str) -> ApiError:
    errors = [{**e, "field": field} for e in (exc.errors or [])] or None
    detail = exc.detail.replace("file:", f"{field}:", 1) if exc.detail.startswith("file") else f"{field}: {exc.detail}"
    return ApiError(exc.status, exc.title, detail, code=exc.code, errors=errors, headers=exc.headers)
