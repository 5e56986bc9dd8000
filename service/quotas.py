"""Per-tenant quotas on stored bytes: what a tenant keeps in the job store and object storage.

Each quota is a ledger in the job store (JobStore.charge_bytes): an entry per stored item, for as
long as retention keeps it. Over a quota: 429 problem+json `storage_quota_exceeded` naming the
quota, its setting, the bytes in use and the limit, with Retry-After until the oldest entry ends;
an item larger than the whole quota is 413.
"""
from __future__ import annotations

import math

from service.core.errors import ApiError

UPLOADS, PARAMS = "uploads", "params"
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
