"""Tuned video models: the Tune-A-Video tunings (`tvm_...`) that video edits keep as tenant
resources, their artifacts (trained parameters, metadata, the clip's latents) in object
storage. GET lists (paged, newest first) or shows one; DELETE removes the resource and its
artifacts. Video edits create them (POST /v1/video-edits)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.api.deps import Ctx, Tenant
from service.api.routes.videos import TUNED_VIDEO_MODEL
from service.core.errors import not_found
from service.schemas import TunedVideoModel, TunedVideoModelPage
from service.schemas.video import TUNED_MODEL_ID

router = APIRouter(prefix="/v1", tags=["video"])


def _as_schema(doc: dict) -> TunedVideoModel:
    return TunedVideoModel(id=doc["id"], base_model=doc["base_model_id"], source_prompt=doc["source_prompt"],
                           clip=doc["clip"], tune_steps=doc["tune_steps"], size_bytes=doc.get("size_bytes"),
                           job_id=doc["job_id"], created_at=datetime.fromtimestamp(doc["created_at"], tz=timezone.utc))


async def _owned(ctx, tenant: str, model_id: str) -> dict:
    """The tuned model, or 404 (another tenant's is indistinguishable from none)."""
    doc = await ctx.astore.get_resource(TUNED_VIDEO_MODEL, model_id) if model_id.startswith("tvm_") else None
    if doc is None or doc["tenant"] != tenant:
        raise not_found("tuned video model")
    return doc


@router.get("/video-models", response_model=TunedVideoModelPage,
            summary="This tenant's tuned video models (Tune-A-Video tunings kept by video edits), newest first")
async def list_video_models(ctx: Ctx, tenant: Tenant,
                            cursor: Annotated[str | None, Query(pattern=TUNED_MODEL_ID)] = None,
                            limit: Annotated[int, Query(ge=1, le=100)] = 20) -> TunedVideoModelPage:
    docs = await ctx.astore.list_resources(TUNED_VIDEO_MODEL, tenant, cursor=cursor, limit=limit + 1)
    page = docs[:limit]
    return TunedVideoModelPage(items=[_as_schema(d) for d in page],
                               next_cursor=page[-1]["id"] if len(docs) > limit else None)


@router.get("/video-models/{model_id}", response_model=TunedVideoModel, summary="One tuned video model")
async def get_video_model(model_id: str, ctx: Ctx, tenant: Tenant) -> TunedVideoModel:
    return _as_schema(await _owned(ctx, tenant, model_id))


@router.delete("/video-models/{model_id}", status_code=204,
               summary="Delete a tuned video model and its stored artifacts")
async def delete_video_model(model_id: str, ctx: Ctx, tenant: Tenant) -> Response:
    doc = await _owned(ctx, tenant, model_id)
    await ctx.astore.delete_resource(TUNED_VIDEO_MODEL, model_id)
    await ctx.offload("storage", ctx.objects.delete_prefix, doc["prefix"])  # the artifacts: blocking I/O
    return Response(status_code=204)
