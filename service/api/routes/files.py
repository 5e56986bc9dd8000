from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials

from fastapi import Depends

from service.api.deps import Ctx, _bearer
from service.core.errors import not_found
from service.storage.base import InvalidKey, ObjectNotFound, check_key

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{key:path}", response_class=FileResponse, summary="Download a result by its signed, expiring URL",
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def get_file(key: str, ctx: Ctx, expires: Annotated[int, Query()], tenant: Annotated[str, Query(max_length=64)],
             signature: Annotated[str, Query(max_length=128)],
             creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> FileResponse:
    """The signature is the credential (like a presigned S3 URL), bound to the key, its expiry and the
    owning tenant. A request that also presents another tenant's key gets 404."""
    verify = getattr(ctx.objects, "verify", None)
    try:
        check_key(key)
    except InvalidKey:
        raise not_found("file")
    if verify is None or not verify(key, expires, tenant, signature):
        raise not_found("file")
    if creds is not None and not ctx.keyring.anonymous and ctx.keyring.tenant_for(creds.credentials) != tenant:
        raise not_found("file")
    def locate():  # file system calls: off the event loop (FileResponse streams in threads too)
        path = ctx.objects.open_path(key)
        return path, path.is_file(), ctx.objects.content_type(key)

    try:
        path, is_file, media_type = await ctx.offload("storage", locate)
    except (InvalidKey, ObjectNotFound, FileNotFoundError):
        raise not_found("file")
    if not is_file:
        raise not_found("file")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
