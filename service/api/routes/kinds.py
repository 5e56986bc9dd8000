"""GET /v1/kinds: every job kind as declared in service/kinds.py, with its schemas and live workers."""
from __future__ import annotations

import importlib
from functools import lru_cache

from fastapi import APIRouter

from service.api.deps import BEARER, Ctx, Tenant
from service.core.errors import ApiError
from service.kinds import KINDS
from service.schemas.kinds import KindInfo, KindList, KindWorker

router = APIRouter(prefix="/v1/kinds", tags=["kinds"])


@lru_cache
def schema_of(dotted: str | None) -> dict:
    """The JSON schema of a declared "module:Model" (validation mode for requests)."""
    if not dotted:
        return {}
    module, _, name = dotted.partition(":")
    model = getattr(importlib.import_module(module), name)
    return model.model_json_schema(mode="validation" if name.endswith("Request") else "serialization")


async def kind_info(ctx, name: str) -> KindInfo:
    kind = KINDS[name]
    reports = await ctx.astore.get_capabilities(name)
    workers = [KindWorker(worker=r.get("worker"), profile=r.get("profile"),
                          weights_fingerprint=r.get("weights_fingerprint"), ready=bool(r.get("ready", True)),
                          missing=list(r.get("missing") or []), features=dict(r.get("features") or {}))
               for r in reports]
    return KindInfo(name=name, description=kind.description, path=kind.path, queue=kind.queue,
                    input_schema=schema_of(kind.request), result_schema=schema_of(kind.result),
                    workers=sorted(workers, key=lambda w: w.worker or ""))


@router.get("", response_model=KindList, openapi_extra=BEARER,
            summary="Every job kind: its route, input and result JSON schemas, and the live workers serving it")
async def list_kinds(ctx: Ctx, tenant: Tenant) -> KindList:
    return KindList(items=[await kind_info(ctx, name) for name in KINDS])


@router.get("/{name}", response_model=KindInfo, openapi_extra=BEARER, summary="One job kind")
async def get_kind(name: str, ctx: Ctx, tenant: Tenant) -> KindInfo:
    if name not in KINDS:
        raise ApiError(404, "Not found", f"no job kind {name!r}; known: {', '.join(KINDS)}", code="not_found")
    return await kind_info(ctx, name)
