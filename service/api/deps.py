"""FastAPI dependencies as Annotated aliases."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

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


async def tenant_of(ctx: AppContext, presented: str | None) -> str:
    """The key's tenant, after its rate limit: 401 for a missing or unknown key, 429 over the rate."""
    tenant = ctx.keyring.tenant_for(presented)
    if tenant is None:
        raise ApiError(401, "Unauthorized", "missing or unknown API key (Authorization: Bearer <key>)",
                       code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    retry_after = await ctx.limiter.hit(tenant)
    if retry_after is not None:
        raise too_many(f"more than {ctx.limiter.per_minute} requests per minute for this key", retry_after,
                       "rate_limited")
    return tenant


async def get_tenant(ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    return await tenant_of(ctx, creds.credentials if creds else None)


Tenant = Annotated[str, Depends(get_tenant)]

# The hot read routes (job status, waits, streams, lists) take the request alone and call
# `authenticate`: FastAPI's dependency graph costs about as much as the rest of a status read.
# They document the same security as the HTTPBearer dependency does:
BEARER = {"security": [{"HTTPBearer": []}]}


async def authenticate(request: Request) -> tuple[AppContext, str, str]:
    """(ctx, tenant, base URL) of a request, like Ctx + Tenant + BaseUrl (HTTPBearer's parsing),
    read straight from the ASGI scope."""
    ctx = request.app.state.ctx
    authorization = host = None
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"host":
            host = value
    scheme, credentials = get_authorization_scheme_param(authorization)
    presented = credentials if scheme and credentials and scheme.lower() == "bearer" else None
    tenant = await tenant_of(ctx, presented)
    return ctx, tenant, ctx.settings.public_url.rstrip("/") if ctx.settings.public_url else _base(request, host)


_BASES: dict[tuple, str] = {}


def _base(request: Request, host: bytes | None) -> str:
    """str(request.base_url) without the slash, cached per (scheme, host, root path)."""
    key = (request.scope.get("scheme"), host, request.scope.get("root_path", ""))
    base = _BASES.get(key)
    if base is None:
        base = str(request.base_url).rstrip("/")
        if len(_BASES) < 1024:  # Host headers are client input: bounded
            _BASES[key] = base
    return base


async def base_url(request: Request, ctx: Ctx) -> str:
    return (ctx.settings.public_url or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]


async def find_job(ctx: AppContext, tenant: str, job_id: str) -> JobRecord:
    """The tenant's job as clients see it (AsyncJobStore.read_job), or 404."""
    job = await ctx.astore.read_job(job_id) if job_id.startswith("job_") and len(job_id) == 28 else None
    if job is None or job.tenant != tenant:  # another tenant's job is indistinguishable from none
        raise not_found("job")
    return job


