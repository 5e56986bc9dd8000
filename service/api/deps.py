"""FastAPI dependencies as Annotated aliases."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core.config import Settings
from service.core.errors import ApiError, not_found
from service.core.security import KeyRing
from service.dispatch import Dispatcher
from service.limits import RateLimiter, too_many
from service.offload import Offload
from service.storage.base import ObjectStore
from service.store.aio import AsyncJobStore
from service.store.base import JobRecord, JobStore
from service.waiters import ChangeHub


@dataclass
class AppContext:
    settings: Settings
    store: JobStore  # sync, with its own connections: the reaper, the webhook deliverer, /metrics, workers
    objects: ObjectStore
    dispatcher: Dispatcher
    keyring: KeyRing
    limiter: RateLimiter
    model_profile: str | None = None  # what workers report on results (embedded: resolved at start)
    stopping: threading.Event = field(default_factory=threading.Event)  # set on SIGTERM/SIGINT
    # opened by the app's lifespan, inside its event loop (service/app.py):
    astore: AsyncJobStore | None = None  # the request path: async reads, writes and waits
    hub: ChangeHub | None = None         # waiters of long-polls and event streams
    offload: Offload | None = None       # bounded thread pools for blocking calls


# Dependencies are `async def`: FastAPI runs sync ones in the threadpool, one hop each.
async def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
_bearer = HTTPBearer(auto_error=False, description="API key; each key is a tenant.")


async def get_tenant(ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    tenant = ctx.keyring.tenant_for(creds.credentials if creds else None)
    if tenant is None:
        raise ApiError(401, "Unauthorized", "missing or unknown API key (Authorization: Bearer <key>)",
                       code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    retry_after = await ctx.limiter.hit(tenant)
    if retry_after is not None:
        raise too_many(f"more than {ctx.limiter.per_minute} requests per minute for this key", retry_after,
                       "rate_limited")
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]


async def base_url(request: Request, ctx: Ctx) -> str:
    return (ctx.settings.public_url or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]


async def owned_job(job_id: str, ctx: Ctx, tenant: Tenant) -> JobRecord:
    job = await ctx.astore.get_job(job_id) if job_id.startswith("job_") and len(job_id) == 28 else None
    if job is None or job.tenant != tenant:  # another tenant's job is indistinguishable from none
        raise not_found("job")
    return job


OwnedJob = Annotated[JobRecord, Depends(owned_job)]
