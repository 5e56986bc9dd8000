"""Upload intake: type sniffed from the bytes (never the name), size limits, and the work budget
of images (structure counted before decoding, concurrent decodes bounded per process and per
tenant); the per-job pixel budget of submissions."""
from __future__ import annotations

import asyncio
import hashlib
import io
import re
import threading
import time
import warnings
from contextlib import contextmanager

from PIL import Image

from service import imagescan
from service.core.errors import ApiError, field_error
from service.imagescan import StructureLimits
from service.store.base import UploadRecord, new_id

IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"}


def sniff_content_type(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:2] == b"BM":
        return "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a ZIP, or an empty one
        return "application/zip"
    return None


def image_dimensions(data: bytes, limits: StructureLimits) -> tuple[int, int]:
    """(width, height) as the image is meant to be seen (EXIF orientation 5-8 swaps the sides,
    as the workers' decoder turns the pixels upright), after refusing hostile and broken files.

    First the work budget, from the bytes alone (service/imagescan.py: canvas pixels, frames x
    pixels, JPEG scans, chunk/segment counts), so a file whose decoding would cost seconds of CPU
    is refused in microseconds. Then the first frame is decoded (JPEGs at 1/8 scale), so a
    truncated or corrupt file is refused here, with a 422 naming `file`, instead of failing a
    job later: `verify()` alone misses truncated JPEG, GIF, TIFF and BMP data, and PNGs whose
    image data is shorter than their header says. Animated images: the first frame is what
    every job uses (models/media.py), so it is the one decoded; all frames count in the budget."""
    max_pixels = limits.max_pixels
    try:
        imagescan.scan(data, limits)
    except imagescan.StructureError as exc:
        if exc.setting:
            raise field_error("file", f"{exc} (VISIONJOBS_{exc.setting.upper()})", limit=exc.limit)
        raise field_error("file", f"not a readable image ({exc})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise field_error("file", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                                      limit=max_pixels)
                img.verify()  # structural check of the whole file without decoding pixels
            with Image.open(io.BytesIO(data)) as img:
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
                img.load()
                orientation = _orientation(img)
    except ApiError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise field_error("file", f"image exceeds the pixel limit of {max_pixels}", limit=max_pixels)
    except Exception as exc:  # PIL raises many types for broken files
        raise field_error("file", f"not a readable image ({type(exc).__name__}: {exc})")
    if width < 1 or height < 1:
        raise field_error("file", "image has no pixels")
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable: the decoder then keeps the pixels as stored)."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")


def build_upload(tenant: str, filename: str | None, data: bytes, limits: StructureLimits) -> UploadRecord:
    if not data:
        raise field_error("file", "the file is empty")
    content_type = sniff_content_type(data[:32])
    if content_type is None:
        raise ApiError(415, "Unsupported media type",
                       "file: content is not a supported image (PNG, JPEG, WebP, GIF, BMP, TIFF), video (MP4, WebM) or ZIP",
                       code="unsupported_media_type", errors=[{"field": "file", "message": "unsupported content"}])
    width = height = None
    if content_type in IMAGE_TYPES:
        width, height = image_dimensions(data, limits)
    upload_id = new_id("upl")
    name = _SAFE_NAME.sub("_", (filename or "upload"))[:200] or "upload"
    return UploadRecord(id=upload_id, tenant=tenant, filename=name, content_type=content_type, size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), key=f"uploads/{tenant}/{upload_id}",
                        width=width, height=height)


# --- concurrent decodes ---------------------------------------------------------------------

class DecodeGate:
    """Bounds concurrent decodes per process and per tenant (each decode of a max-size image
    holds tens of MB). A counting semaphore under one lock, so it works from any thread and any
    event loop: async callers wait with short sleeps (no thread held while waiting), sync
    callers on a condition variable."""

    def __init__(self, per_process: int, per_tenant: int):
        self.per_process, self.per_tenant = max(1, per_process), max(1, per_tenant)
        self._cond = threading.Condition()
        self._total = 0
        self._tenants: dict[str, int] = {}

    def _try(self, tenant: str) -> str | None:
        """None when a slot was taken; else which bound is full ("tenant" or "process")."""
        with self._cond:
            if self._tenants.get(tenant, 0) >= self.per_tenant:
                return "tenant"
            if self._total >= self.per_process:
                return "process"
            self._total += 1
            self._tenants[tenant] = self._tenants.get(tenant, 0) + 1
            return None

    def release(self, tenant: str) -> None:
        with self._cond:
            self._total -= 1
            left = self._tenants[tenant] - 1
            if left:
                self._tenants[tenant] = left
            else:
                del self._tenants[tenant]
            self._cond.notify_all()

    def in_use(self, tenant: str | None = None) -> int:
        with self._cond:
            return self._total if tenant is None else self._tenants.get(tenant, 0)

    def _busy(self, full: str, wait_s: float) -> ApiError:
        if full == "tenant":
            return ApiError(429, "Too many requests", f"file: this key already has {self.per_tenant} images being "
                            f"checked (VISIONJOBS_MAX_TENANT_DECODES); retry shortly", code="decode_busy",
                            errors=[{"field": "file", "message": "too many concurrent decodes", "limit": self.per_tenant}],
                            headers={"Retry-After": "2"})
        return ApiError(503, "Service unavailable", f"file: {self.per_process} images are being checked "
                        f"(VISIONJOBS_MAX_DECODES) and none finished within {wait_s:g} s; retry shortly",
                        code="decode_busy",
                        errors=[{"field": "file", "message": "decoder busy", "limit": self.per_process}],
                        headers={"Retry-After": "2"})

    async def acquire(self, tenant: str, wait_s: float) -> None:
        deadline, delay = time.monotonic() + wait_s, 0.005
        while (full := self._try(tenant)) is not None:
            if time.monotonic() + delay > deadline:
                raise self._busy(full, wait_s)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    @contextmanager
    def hold(self, tenant: str, wait_s: float):
        """The same, for code running in a thread."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while (full := self._try(tenant)) is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy(full, wait_s)
                self._cond.wait(min(left, 0.1))
        try:
            yield
        finally:
            self.release(tenant)


_gates: dict[tuple[int, int], DecodeGate] = {}
_gates_lock = threading.Lock()


def decode_gate(settings) -> DecodeGate:
    """The process's gate for these bounds (one per process: the bound is per process)."""
    key = (settings.max_decodes, settings.max_tenant_decodes)
    with _gates_lock:
        if key not in _gates:
            _gates[key] = DecodeGate(*key)
        return _gates[key]


async def check_upload(ctx, tenant: str, filename: str | None, data: bytes) -> UploadRecord:
    """The upload route's check: a decode slot (waiting costs no thread), then the CPU work off
    the event loop (the API's `decode` pool)."""
    settings = ctx.settings
    if sniff_content_type(data[:32]) not in IMAGE_TYPES:  # nothing to decode: no slot needed
        return build_upload(tenant, filename, data, StructureLimits.from_settings(settings))
    gate = decode_gate(settings)
    await gate.acquire(tenant, settings.decode_wait_s)
    try:
        return await ctx.offload("decode", build_upload, tenant, filename, data, StructureLimits.from_settings(settings))
    finally:
        gate.release(tenant)


# --- the per-job pixel budget ---------------------------------------------------------------

async def check_job_pixels(ctx, upload_ids: list[str], field: str, extra: int = 0) -> int:
    """Sum of the pixels of a job's image uploads (their headers were read at upload) plus
    `extra` (an archive's entries); 422 naming `field` beyond VISIONJOBS_MAX_JOB_PIXELS. Call
    after the route checked that the ids are this tenant's images."""
    limit, total = ctx.settings.max_job_pixels, extra
    for upload_id in upload_ids:
        rec = await ctx.astore.get_upload(upload_id)
        total += (rec.width or 0) * (rec.height or 0) if rec else 0
        if total > limit:
            break
    if total > limit:
        raise field_error(field, f"the job's images add up to more than {limit} pixels "
                                 f"(VISIONJOBS_MAX_JOB_PIXELS)", limit=limit)
    return total
