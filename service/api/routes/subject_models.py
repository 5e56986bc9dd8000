"""Subject models: DreamBooth-LoRA tunings kept as tenant resources (`sbm_...`), their LoRA delta
in object storage. POST tunes one (job kind subject.tune); GET lists or shows; DELETE removes
the resource and its artifact bytes. Also the checks subject-generations share."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Header, Response

from service import quotas
from service.url_inputs import fetch_inputs
from service.api.deps import BaseUrl, Ctx, Tenant
from service.core.errors import ApiError, field_error
from service.jobs import accept
from service.limits import too_many
from service.schemas import Job, SubjectModel, SubjectModelList, SubjectModelRequest, TuningSettings
from service.uploads import IMAGE_TYPES, check_job_pixels

router = APIRouter(prefix="/v1", tags=["subject"])
SUBJECT_MODEL = "subject_model"  # resource kind in the job store
_ACCEPTED = {202: {"headers": {"Location": {"schema": {"type": "string"}}}}}


def check_photo_count(ctx, ids: list[str], field: str = "subject_images") -> None:
    limit = ctx.settings.max_subject_images
    if len(ids) > limit:
        raise field_error(field, f"{len(ids)} photos; at most {limit}", limit=limit)


async def check_photos(ctx, tenant: str, ids: list[str], field: str = "subject_images") -> None:
    """Every id an image upload of this tenant, at most VISIONJOBS_MAX_SUBJECT_IMAGES of them,
    together within the job's pixel budget (VISIONJOBS_MAX_JOB_PIXELS)."""
    check_photo_count(ctx, ids, field)
    for i, upload_id in enumerate(ids):
        rec = await ctx.astore.get_upload(upload_id) if upload_id.startswith("upl_") else None
        if rec is None or rec.tenant != tenant:
            raise field_error(f"{field}.{i}", f"no upload {upload_id} (upload the photo first with POST /v1/uploads)")
        if rec.content_type not in IMAGE_TYPES:
            raise field_error(f"{field}.{i}", f"upload {upload_id} is {rec.content_type}, not an image")
    await check_job_pixels(ctx, ids, field)


def check_tuning_limits(ctx, t: TuningSettings, prefix: str = "") -> None:
    """The tuning's limits, on its effective settings (defaults filled in)."""
    s, prior = ctx.settings, t.prior_preservation
    checks = [(f"{prefix}steps", t.steps, s.max_tune_steps), (f"{prefix}rank", t.rank, s.max_lora_rank)]
    if prior.enabled:
        checks += [(f"{prefix}prior_preservation.class_images", prior.class_images, s.max_class_images),
                   (f"{prefix}prior_preservation.class_image_steps", prior.class_image_steps, s.max_steps)]
    for field, value, limit in checks:
        if value > limit:
            raise field_error(field, f"{value} is over the limit of {limit}", limit=limit)


async def check_model_count(ctx, tenant: str) -> None:
    s = ctx.settings
    held = len(await ctx.astore.list_resources(SUBJECT_MODEL, tenant))
    if s.max_subject_models and held >= s.max_subject_models:
        raise too_many(f"this key has {held} subject models, the limit of {s.max_subject_models}; delete some "
                       "(DELETE /v1/subject-models/{id}) before tuning another", 60, "quota_exceeded")


async def owned_model(ctx, tenant: str, model_id: str, field: str | None = None) -> dict:
    """The subject model, or 404 (another tenant's is indistinguishable from none)."""
    doc = await ctx.astore.get_resource(SUBJECT_MODEL, model_id) if model_id.startswith("sbm_") else None
    if doc is None or doc["tenant"] != tenant:
        errors = [{"field": field, "message": f"no subject model {model_id}"}] if field else None
        raise ApiError(404, "Not found", f"{field + ': ' if field else ''}no subject model with this id",
                       code="not_found", errors=errors)
    return doc


@router.post("/subject-models", status_code=202, response_model=Job, responses=_ACCEPTED,
             summary="Tune a subject model: DreamBooth-LoRA on 1-8 photos (job kind subject.tune)")
async def create_subject_model(body: SubjectModelRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                               idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    sent = body.model_dump()  # the request as the client sent it: what its Idempotency-Key is bound to
    body = await fetch_inputs(ctx, tenant, body)  # URL and data: inputs -> uploads
    check_photo_count(ctx, body.subject_images)
    check_tuning_limits(ctx, body)
    await check_photos(ctx, tenant, body.subject_images)
    return await accept(ctx, tenant=tenant, base_url=base, kind="subject.tune", sent=sent, params=body.model_dump(),
                        idempotency_key=idempotency_key, admit=lambda: check_quota(ctx, tenant))


async def check_quota(ctx, tenant: str) -> None:
    """A tuning keeps a subject model: at most VISIONJOBS_MAX_SUBJECT_MODELS per key, and within
    the key's artifact bytes (VISIONJOBS_MAX_TENANT_ARTIFACT_BYTES)."""
    await check_model_count(ctx, tenant)
    await quotas.check_artifacts(ctx, tenant, "subject_images")


def _as_schema(doc: dict) -> SubjectModel:
    return SubjectModel(id=doc["id"], subject_class=doc["subject_class"], identifier=doc["identifier"],
                        instance_prompt=doc.get("instance_prompt"), base_model=doc["base_model"],
                        model_profile=doc.get("profile"), training=doc.get("training", {}),
                        num_parameters=doc["num_parameters"], size_bytes=doc["size_bytes"], job_id=doc["job_id"],
                        created_at=datetime.fromtimestamp(doc["created_at"], tz=timezone.utc))


@router.get("/subject-models", response_model=SubjectModelList, summary="This key's subject models")
async def list_subject_models(ctx: Ctx, tenant: Tenant) -> SubjectModelList:
    return SubjectModelList(items=[_as_schema(d) for d in await ctx.astore.list_resources(SUBJECT_MODEL, tenant)])


@router.get("/subject-models/{model_id}", response_model=SubjectModel, summary="One subject model")
async def get_subject_model(model_id: str, ctx: Ctx, tenant: Tenant) -> SubjectModel:
    return _as_schema(await owned_model(ctx, tenant, model_id))


@router.delete("/subject-models/{model_id}", status_code=204,
               summary="Delete a subject model and its stored LoRA delta")
async def delete_subject_model(model_id: str, ctx: Ctx, tenant: Tenant) -> Response:
    doc = await owned_model(ctx, tenant, model_id)
    await ctx.astore.delete_resource(SUBJECT_MODEL, model_id)
    await ctx.offload("storage", ctx.objects.delete_prefix, doc["prefix"])  # the LoRA bytes: blocking I/O
    return Response(status_code=204)
