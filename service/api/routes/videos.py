from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from service import quotas
from service.url_inputs import fetch_inputs
from service.api.deps import BaseUrl, Ctx, Tenant
from service.core.errors import field_error
from service.jobs import accept
from service.schemas import Job, VideoEditRequest, VideoGenerationRequest, video_frame_count
from service.schemas.video import DEFAULT_HEIGHT, DEFAULT_WIDTH

router = APIRouter(prefix="/v1", tags=["video"])


@router.post("/video-generations", status_code=202, response_model=Job,
             summary="Generate a long multi-prompt video (DiTCtrl on CogVideoX)",
             responses={202: {"headers": {"Location": {"schema": {"type": "string"}}}}})
async def create_video_generation(body: VideoGenerationRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                                  idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    s = ctx.settings
    segments, latent, frames = video_frame_count(len(body.prompts), body.overlap, body.transition_segments, body.segments)
    if frames > s.max_video_frames:
        raise field_error("prompts", f"this layout makes {frames} frames ({segments} segments); the limit is "
                                     f"{s.max_video_frames}: fewer prompts, segments or transition segments, or more overlap",
                          limit=s.max_video_frames)
    # on the effective size: an absent width or height is the model's default, not "unchecked"
    width, height = body.width or DEFAULT_WIDTH, body.height or DEFAULT_HEIGHT
    if width * height > s.max_video_pixels:
        raise field_error("width" if body.width else "height", f"{width}x{height} exceeds {s.max_video_pixels} pixels "
                          f"per frame (an absent width is {DEFAULT_WIDTH}, height {DEFAULT_HEIGHT})",
                          limit=s.max_video_pixels)
    if body.steps > s.max_steps:
        raise field_error("steps", f"at most {s.max_steps} steps", limit=s.max_steps)
    params = body.model_dump()
    params.update(expected_frames=frames, expected_segments=segments, expected_latent_frames=latent)
    return await accept(ctx, tenant=tenant, base_url=base, kind="video.generate", params=params,
                  idempotency_key=idempotency_key)


VIDEO_TYPES = {"video/mp4", "video/webm", "video/quicktime", "image/gif"}
TUNED_VIDEO_MODEL = "tuned_video_model"  # resource kind in the job store


@router.post("/video-edits", status_code=202, response_model=Job,
             summary="Edit a video with text (Tune-A-Video), or re-edit with a tuned model",
             responses={202: {"headers": {"Location": {"schema": {"type": "string"}}}}})
async def create_video_edit(body: VideoEditRequest, ctx: Ctx, tenant: Tenant, base: BaseUrl,
                            idempotency_key: Annotated[str | None, Header(max_length=200)] = None):
    sent = body.model_dump()  # the request as the client sent it: what its Idempotency-Key is bound to
    body = await fetch_inputs(ctx, tenant, body)  # URL and data: inputs -> uploads
    s = ctx.settings
    if body.video:
        rec = await ctx.astore.get_upload(body.video)
        if rec is None or rec.tenant != tenant:
            raise field_error("video", f"no upload {body.video} (upload the file first with POST /v1/uploads)")
        if rec.content_type not in VIDEO_TYPES:
            raise field_error("video", f"upload {body.video} is {rec.content_type}, not a video (MP4, WebM, MOV, GIF)")
    else:
        model = await ctx.astore.get_resource(TUNED_VIDEO_MODEL, body.tuned_model)
        if model is None or model["tenant"] != tenant:
            raise field_error("tuned_model", f"no tuned model {body.tuned_model}")
    if body.steps > s.max_steps:
        raise field_error("steps", f"at most {s.max_steps} steps", limit=s.max_steps)
    admit = (lambda: quotas.check_artifacts(ctx, tenant, "video")) if body.video else None  # a tuning keeps one
    return await accept(ctx, tenant=tenant, base_url=base, kind="video.edit", sent=sent, params=body.model_dump(),
                        idempotency_key=idempotency_key, admit=admit)
