"""POST /v1/subject-generations: images of a subject from a few of its photos (job kind
subject.generate), in-context (BLIP-Diffusion) or expert (DreamBooth-LoRA)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from service.url_inputs import fetch_inputs
from service.api.deps import BaseUrl, Ctx, Tenant
from service.api.routes.subject_models import check_photos, check_quota, check_tuning_limits, owned_model
from service.core.errors import field_error
from service.jobs import accept
from service.schemas import Job, SubjectGenerationRequest

router = APIRouter(prefix="/v1", tags=["subject"])
DEFAULT_SIZE = 512  # the pretrained models' native size: what an absent width/height means for the limits
_RESPONSES = {202: {"headers": {"Location": {"schema": {"type": "string"}}}},
              404: {"description": "No such subject_model for this key (another key's is indistinguishable)",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}}


@router.post("/subject-generations", status_code=202, response_model=Job, responses=_RESPONSES,
             summary="Generate images of a subject: in-context (no tuning) or expert (DreamBooth-LoRA)")
async def create_subject_generation(body: SubjectGenerationRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                                    idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    sent = body.model_dump()  # the request as the client sent it: what its Idempotency-Key is bound to
    body = await fetch_inputs(ctx, tenant, body)  # URL and data: inputs -> uploads
    s = ctx.settings
    params = body.model_dump()  # the effective request: `method` and `tuning` defaults filled in
    # 1. the combinations of fields
    if body.subject_model is None:
        if not body.subject_images:
            raise field_error("subject_images", "give 1-8 photos of the subject (or a subject_model)")
        if body.subject_class is None:
            raise field_error("subject_class", 'say what the subject is ("dog")')
    elif body.method == "in_context":
        raise field_error("subject_model", "a subject model is an expert (DreamBooth-LoRA) tuning: "
                                           "use method expert, or leave subject_model out")
    if body.tuning is not None and (body.method == "in_context" or body.subject_model is not None):
        raise field_error("tuning", "only method expert without a subject_model tunes: leave tuning out")
    if {"clip_i", "dino"} & set(body.metrics) and not body.subject_images:
        raise field_error("metrics", "clip_i and dino compare the outputs with the subject photos: give subject_images")
    # 2. the limits, on the effective values (an absent size is the models' 512)
    width, height = body.width or DEFAULT_SIZE, body.height or DEFAULT_SIZE
    if width * height > s.max_subject_pixels:
        raise field_error("height" if body.height and not body.width else "width",
                          f"{width}x{height} exceeds {s.max_subject_pixels} pixels per image", limit=s.max_subject_pixels)
    if body.steps > s.max_steps:
        raise field_error("steps", f"at most {s.max_steps} steps", limit=s.max_steps)
    if body.num_outputs > s.max_outputs:
        raise field_error("num_outputs", f"at most {s.max_outputs} outputs", limit=s.max_outputs)
    for field, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt or "")):
        if len(text) > s.max_prompt_chars:
            raise field_error(field, f"at most {s.max_prompt_chars} characters", limit=s.max_prompt_chars)
    if body.tuning is not None:  # expert without a subject model: the job tunes one first
        check_tuning_limits(ctx, body.tuning, prefix="tuning.")
    # 3. what the store holds: the subject model, the photos, the subject-model quota
    if body.subject_model is not None:
        model = await owned_model(ctx, tenant, body.subject_model, field="subject_model")
        if body.subject_class is not None and body.subject_class != model["subject_class"]:
            raise field_error("subject_class", f"the subject model is a {model['subject_class']!r}: leave "
                                               "subject_class out or give the same")
        params["subject_class"] = model["subject_class"]
    await check_photos(ctx, tenant, body.subject_images)
    admit = (lambda: check_quota(ctx, tenant)) if body.tuning is not None else None  # after a repeated key
    return await accept(ctx, tenant=tenant, base_url=base, kind="subject.generate", sent=sent, params=params,
                        idempotency_key=idempotency_key, admit=admit)
