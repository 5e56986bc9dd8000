from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from service.url_inputs import fetch_inputs
from service.api.deps import BaseUrl, Ctx, Tenant
from service.core.errors import field_error
from service.jobs import accept
from service.schemas import ColorizationRequest, Job
from service.schemas.common import MAX_TOTAL_POINTS
from service.uploads import IMAGE_TYPES, check_job_pixels

router = APIRouter(prefix="/v1/colorizations", tags=["colorization"])


def check_strokes(body: ColorizationRequest, width: int, height: int) -> None:
    total = 0
    for i, stroke in enumerate(body.strokes):
        total += len(stroke.points)
        for j, (x, y) in enumerate(stroke.points):
            if not (0 <= x <= width and 0 <= y <= height):
                raise field_error(f"strokes.{i}.points.{j}", f"({x:g}, {y:g}) lies outside the {width}x{height} image",
                                  limit=[width, height])
    if total > MAX_TOTAL_POINTS:
        raise field_error("strokes", f"{total} points in all; the limit is {MAX_TOTAL_POINTS}", limit=MAX_TOTAL_POINTS)


async def unsupported(ctx, feature: str) -> str | None:
    """Refuse an optional feature only when live colorize workers have reported and none can
    use it (their pretrained weights lack it); the message names what is missing."""
    caps = await ctx.astore.get_capabilities("colorize")
    if not caps or any(c.get(feature) for c in caps):
        return None
    return caps[0].get(f"{feature}_missing") or f"{feature} weights"


async def image_upload(ctx, tenant: str, upload_id: str, field: str):
    rec = await ctx.astore.get_upload(upload_id)
    if rec is None or rec.tenant != tenant:
        raise field_error(field, f"no upload {upload_id} (upload the file first with POST /v1/uploads)")
    if rec.content_type not in IMAGE_TYPES:
        raise field_error(field, f"upload {upload_id} is {rec.content_type}, not an image")
    return rec


@router.post("", status_code=202, response_model=Job, summary="Colorize a photo (Control Color)",
             responses={202: {"headers": {"Location": {"schema": {"type": "string"}}}}})
async def create_colorization(body: ColorizationRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                              idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    sent = body.model_dump()  # the request as the client sent it: what its Idempotency-Key is bound to
    body = await fetch_inputs(ctx, tenant, body)  # URL and data: inputs -> uploads
    s = ctx.settings
    image = await image_upload(ctx, tenant, body.image, "image")
    check_strokes(body, image.width, image.height)
    if body.stroke_image:
        strokes = await image_upload(ctx, tenant, body.stroke_image, "stroke_image")
        if (strokes.width, strokes.height) != (image.width, image.height):
            raise field_error("stroke_image", f"is {strokes.width}x{strokes.height}; it must match the image's "
                                              f"{image.width}x{image.height}")
    if body.exemplar:
        await image_upload(ctx, tenant, body.exemplar, "exemplar")
    for field, feature, wanted in (("exemplar", "exemplar", body.exemplar),
                                   ("deformable_decoder", "deformable_decoder", body.deformable_decoder),
                                   ("guidance.mode", "autoguidance", body.guidance.mode == "autoguidance")):
        missing = await unsupported(ctx, feature) if wanted else None
        if missing:
            raise field_error(field, f"no worker can run this: missing under VISIONJOBS_MODEL_DIR: {missing}")
    await check_job_pixels(ctx, [u for u in (body.image, body.stroke_image, body.exemplar) if u], "image")
    if body.steps > s.max_steps:
        raise field_error("steps", f"at most {s.max_steps} steps", limit=s.max_steps)
    if body.num_outputs > s.max_outputs:
        raise field_error("num_outputs", f"at most {s.max_outputs} outputs", limit=s.max_outputs)
    if len(body.prompt) > s.max_prompt_chars:
        raise field_error("prompt", f"at most {s.max_prompt_chars} characters", limit=s.max_prompt_chars)
    return await accept(ctx, tenant=tenant, base_url=base, kind="colorize", sent=sent, params=body.model_dump(),
                  idempotency_key=idempotency_key)
