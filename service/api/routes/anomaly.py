from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Header, Response

from service import quotas
from service.url_inputs import fetch_inputs
from service.api.deps import BaseUrl, Ctx, Tenant
from service.archives import ArchiveError, check_archive, folder_counts
from service.core.errors import field_error, not_found
from service.jobs import accept
from service.schemas import (
    AnomalyFitRequest, AnomalyModel, AnomalyModelList, AnomalyScoreRequest, Job, ThresholdsPatch,
)
from service.schemas.anomaly import MAX_ABNORMAL_IMAGES, MAX_TRAIN_IMAGES, training_work
from service.uploads import IMAGE_TYPES, check_job_pixels

router = APIRouter(prefix="/v1", tags=["anomaly"])
ANOMALY_MODEL = "anomaly_model"  # resource kind in the job store
_ACCEPTED = {202: {"headers": {"Location": {"schema": {"type": "string"}}}}}


async def _images(ctx, tenant: str, ids: list[str], field: str, same_size: bool = False):
    size = None
    for i, upload_id in enumerate(ids):
        if upload_id is None:  # (an abnormal image without a mask)
            continue
        rec = await ctx.astore.get_upload(upload_id) if upload_id.startswith("upl_") else None
        if rec is None or rec.tenant != tenant:
            raise field_error(f"{field}.{i}", f"no upload {upload_id}")
        if rec.content_type not in IMAGE_TYPES:
            raise field_error(f"{field}.{i}", f"upload {upload_id} is {rec.content_type}, not an image")
        if same_size and size and (rec.width, rec.height) != size:
            raise field_error(f"{field}.{i}", f"is {rec.width}x{rec.height}; the first image is {size[0]}x{size[1]}: "
                                              "training images must share one size")
        size = size or (rec.width, rec.height)


def _check_dataset(ctx, body: AnomalyFitRequest, archive_counts: dict | None) -> None:
    """The dataset's limits on the effective request: images per folder of an archive, the
    training work (max_epochs x normal images)."""
    if archive_counts is not None:
        for folder, limit in (("normal", MAX_TRAIN_IMAGES), ("abnormal", MAX_ABNORMAL_IMAGES)):
            if archive_counts[folder] > limit:
                raise field_error("archive", f"{archive_counts[folder]} {folder} images; the limit is {limit}", limit=limit)
        if archive_counts["abnormal"] and (body.validation is not None):
            raise field_error("validation", "the archive holds abnormal images, so the validation split is taken "
                                            "from them (anomalib's Folder); leave `validation` out")
    normal = archive_counts["normal"] if archive_counts is not None else len(body.images)
    work, limit = training_work(body, normal), ctx.settings.max_train_image_epochs
    if work > limit:
        raise field_error("max_epochs", f"{body.max_epochs} epochs x {normal} normal images = {work}, above the "
                                        f"training work limit of {limit} (VISIONJOBS_MAX_TRAIN_IMAGE_EPOCHS)",
                          limit=limit)


@router.post("/anomaly-models", status_code=202, response_model=Job, responses=_ACCEPTED,
             summary="Fit (PatchCore) or train (Reverse Distillation) an anomaly model on a folder dataset "
                     "(job kind anomaly.fit)")
async def fit_model(body: AnomalyFitRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                    idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    sent = body.model_dump()  # the request as the client sent it: what its Idempotency-Key is bound to
    body = await fetch_inputs(ctx, tenant, body)  # URL and data: inputs -> uploads
    archive_pixels, archive_counts = 0, None
    if body.archive:
        rec = await ctx.astore.get_upload(body.archive)
        if rec is None or rec.tenant != tenant:
            raise field_error("archive", f"no upload {body.archive}")
        if rec.content_type != "application/zip":
            raise field_error("archive", f"upload {body.archive} is {rec.content_type}, not a ZIP archive")
        data = await ctx.offload("storage", ctx.objects.get, rec.key)
        archive_pixels, names = await ctx.offload("cpu", check_archive, ctx, data)  # every entry's header: CPU work
        try:
            archive_counts = folder_counts(names)
        except ArchiveError as exc:
            raise field_error("archive", str(exc))
    await _images(ctx, tenant, body.images, "images", same_size=True)
    await _images(ctx, tenant, body.abnormal, "abnormal")
    await _images(ctx, tenant, body.abnormal_masks or [], "abnormal_masks")
    _check_dataset(ctx, body, archive_counts)
    if body.validation:
        await _images(ctx, tenant, body.validation.normal, "validation.normal")
        await _images(ctx, tenant, body.validation.abnormal, "validation.abnormal")
    validation = body.validation.normal + body.validation.abnormal if body.validation else []
    masks = [m for m in body.abnormal_masks or [] if m is not None]
    await check_job_pixels(ctx, [*body.images, *body.abnormal, *masks, *validation],
                           "archive" if body.archive else "images", archive_pixels)
    return await accept(ctx, tenant=tenant, base_url=base, kind="anomaly.fit", sent=sent, params=body.model_dump(),
                        idempotency_key=idempotency_key, admit=lambda: quotas.check_artifacts(ctx, tenant, "name"))


@router.post("/anomaly-scores", status_code=202, response_model=Job, responses=_ACCEPTED,
             summary="Score images with a fitted anomaly model (job kind anomaly.score)")
async def score(body: AnomalyScoreRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    sent = body.model_dump()  # the request as the client sent it: what its Idempotency-Key is bound to
    body = await fetch_inputs(ctx, tenant, body)  # URL and data: inputs -> uploads
    model = await ctx.astore.get_resource(ANOMALY_MODEL, body.model_id)
    if model is None or model["tenant"] != tenant:
        raise field_error("model_id", f"no anomaly model {body.model_id}")
    await _images(ctx, tenant, body.images, "images")
    await check_job_pixels(ctx, body.images, "images")
    return await accept(ctx, tenant=tenant, base_url=base, kind="anomaly.score", sent=sent, params=body.model_dump(),
                  idempotency_key=idempotency_key)


def _as_schema(doc: dict) -> AnomalyModel:
    ts = lambda v: datetime.fromtimestamp(v, tz=timezone.utc)  # noqa: E731
    return AnomalyModel(id=doc["id"], name=doc["name"], model=doc.get("model", "patchcore"), backbone=doc["backbone"],
                        image_size=doc["image_size"], coreset_ratio=doc.get("coreset_ratio"),
                        thresholds=doc["thresholds"], counts=doc["counts"], test_metrics=doc.get("test_metrics"),
                        validation_metrics=doc.get("validation_metrics"), training=doc.get("training"),
                        training_config=doc.get("training_config"), split=doc.get("split"), job_id=doc["job_id"],
                        created_at=ts(doc["created_at"]), updated_at=ts(doc.get("updated_at", doc["created_at"])))


async def _owned(ctx, tenant: str, model_id: str) -> dict:
    doc = await ctx.astore.get_resource(ANOMALY_MODEL, model_id) if model_id.startswith("anm_") else None
    if doc is None or doc["tenant"] != tenant:
        raise not_found("anomaly model")
    return doc


@router.get("/anomaly-models", response_model=AnomalyModelList, summary="This tenant's anomaly models")
async def list_models(ctx: Ctx, tenant: Tenant) -> AnomalyModelList:
    return AnomalyModelList(items=[_as_schema(d) for d in await ctx.astore.list_resources(ANOMALY_MODEL, tenant)])


@router.get("/anomaly-models/{model_id}", response_model=AnomalyModel, summary="One anomaly model")
async def get_model(model_id: str, ctx: Ctx, tenant: Tenant) -> AnomalyModel:
    return _as_schema(await _owned(ctx, tenant, model_id))


@router.patch("/anomaly-models/{model_id}", response_model=AnomalyModel,
              summary="Change thresholds without refitting (raw units; the normalisation maps them to 0.5)")
async def patch_model(model_id: str, body: ThresholdsPatch, ctx: Ctx, tenant: Tenant) -> AnomalyModel:
    doc = await _owned(ctx, tenant, model_id)
    thresholds = dict(doc["thresholds"])
    for name, value in (("image", body.image_threshold), ("pixel", body.pixel_threshold)):
        if value is not None:
            thresholds[name], thresholds[f"{name}_method"] = float(value), "manual"
    doc = {**doc, "thresholds": thresholds, "updated_at": time.time()}
    # a conditional write: a DELETE that ran since the read wins (the model is not brought back without its files)
    if not await ctx.astore.update_resource(ANOMALY_MODEL, model_id, tenant,
                                            {k: v for k, v in doc.items() if k not in ("id", "tenant")}):
        raise not_found("anomaly model")
    return _as_schema(doc)


@router.delete("/anomaly-models/{model_id}", status_code=204, summary="Delete an anomaly model and its files")
async def delete_model(model_id: str, ctx: Ctx, tenant: Tenant) -> Response:
    doc = await _owned(ctx, tenant, model_id)
    await ctx.astore.delete_resource(ANOMALY_MODEL, model_id)
    await ctx.offload("storage", ctx.objects.delete_prefix, doc["prefix"])
    return Response(status_code=204)
