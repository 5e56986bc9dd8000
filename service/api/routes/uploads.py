from __future__ import annotations

from fastapi import APIRouter, Request, UploadFile
from starlette.exceptions import HTTPException

from service import quotas
from service.api.deps import Ctx, Tenant
from service.core.errors import ApiError, field_error, not_found
from service.jobs import _ts
from service.schemas import Upload
from service.uploads import check_upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
_CHUNK = 1 << 20


def _to_schema(rec) -> Upload:
    return Upload(id=rec.id, filename=rec.filename, content_type=rec.content_type, size=rec.size,
                  sha256=rec.sha256, created_at=_ts(rec.created_at), width=rec.width, height=rec.height)


_MULTIPART = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


@router.post("", status_code=201, response_model=Upload, openapi_extra=_MULTIPART,
             summary="Upload an input file (multipart field `file`); its type is read from the content")
async def create_upload(request: Request, ctx: Ctx, tenant: Tenant) -> Upload:
    limit = ctx.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise ApiError(413, "Payload too large", f"file: the body is {declared} bytes; the limit is {limit}",
                       code="payload_too_large", errors=[{"field": "file", "message": "too large", "limit": limit}])
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPException as exc:  # malformed multipart (no boundary, too many parts, ...): name the field
        if exc.status_code != 400:
            raise  # 413 from the body-size limit passes through
        raise field_error("file", f"not a readable multipart/form-data body with one field `file` ({exc.detail})")
    file = form.get("file")
    if not isinstance(file, UploadFile) and not hasattr(file, "read"):
        raise field_error("file", "multipart field `file` is required")
    chunks, size = [], 0
    while chunk := await file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "Payload too large", f"file: larger than the limit of {limit} bytes",
                           code="payload_too_large", errors=[{"field": "file", "message": "too large", "limit": limit}])
        chunks.append(chunk)
    data = b"".join(chunks)
    rec = await check_upload(ctx, tenant, file.filename, data)  # work budget, bounded decodes, off the loop
    await quotas.charge(ctx, tenant, quotas.UPLOADS, rec.id, rec.size, ctx.settings.retention_s, "file")
    try:
        await ctx.offload("storage", ctx.objects.put, rec.key, data, rec.content_type)  # boto3 or files: off the loop
        await ctx.astore.put_upload(rec)
    except BaseException:
        await ctx.astore.release_bytes(tenant, quotas.UPLOADS, rec.id)
        raise
    return _to_schema(rec)


@router.get("/{upload_id}", response_model=Upload, summary="An upload's metadata")
async def get_upload(upload_id: str, ctx: Ctx, tenant: Tenant) -> Upload:
    rec = await ctx.astore.get_upload(upload_id) if upload_id.startswith("upl_") else None
    if rec is None or rec.tenant != tenant:
        raise not_found("upload")
    return _to_schema(rec)
