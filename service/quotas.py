"""Per-tenant quotas on stored bytes: what a tenant keeps in the job store and object storage.

Each quota is a ledger in the job store (JobStore.charge_bytes): an entry per stored item, for as
long as retention keeps it. Over a quota: 429 problem+json `storage_quota_exceeded` naming the
quota, its setting, the bytes in use and the limit, with Retry-After until the oldest entry ends;
an item larger than the whole quota is 413.
"""
from __future__ import annotations

import math

from service.core.errors import ApiError
from service.store.base import ARTIFACTS

UPLOADS, PARAMS = "uploads", "params"
ARTIFACT_RETRY_S = 3600  # artifacts free only when deleted (or idle for VISIONJOBS_ARTIFACT_IDLE_S)
_SETTINGS = {UPLOADS: ("max_tenant_upload_bytes", "uploaded files"),
             PARAMS: ("max_tenant_params_bytes", "job parameters")}


async def charge(ctx, tenant: str, ledger: str, item: str, nbytes: int, ttl_s: float, field: str) -> None:
    setting, what = _SETTINGS[ledger]
    limit = getattr(ctx.settings, setting)
    ok, used, wait = await ctx.astore.charge_bytes(tenant, ledger, item, nbytes, ttl_s, limit)
    if ok:
        return
    name = f"VISIONJOBS_{setting.upper()}"
    error = {"field": field, "message": f"{what} quota exceeded", "quota": ledger, "setting": name,
             "limit": limit, "used": used, "requested": nbytes}
    if nbytes > limit:
        raise ApiError(413, "Payload too large", f"{field}: {nbytes} bytes of {what}, more than this key's whole "
                       f"quota of {limit} ({name})", code="storage_quota_exceeded", errors=[error])
    raise ApiError(429, "Too many requests", f"{field}: this key keeps {used} bytes of {what}; {nbytes} more would "
                   f"pass its quota of {limit} ({name}); space frees as retention ends or after deletes",
                   code="storage_quota_exceeded", errors=[error],
                   headers={"Retry-After": str(max(1, math.ceil(wait)))})


async def check_artifacts(ctx, tenant: str, field: str) -> None:
    """Before a job that makes a tuned artifact: the tenant's artifacts must be under its quota
    (the new one's size is known only once made)."""
    limit = ctx.settings.max_tenant_artifact_bytes
    if not limit:
        return
    used = await ctx.astore.bytes_used(tenant, ARTIFACTS)
    if used >= limit:
        name = "VISIONJOBS_MAX_TENANT_ARTIFACT_BYTES"
        raise ApiError(429, "Too many requests", f"{field}: this key keeps {used} bytes of tuned artifacts, its quota "
                       f"is {limit} ({name}); delete some (anomaly, subject or tuned video models) first",
                       code="storage_quota_exceeded", headers={"Retry-After": str(ARTIFACT_RETRY_S)},
                       errors=[{"field": field, "message": "tuned artifacts quota exceeded", "quota": ARTIFACTS,
                                "setting": name, "limit": limit, "used": used, "requested": 0}])
