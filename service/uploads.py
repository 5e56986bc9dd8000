"""Upload intake: type sniffed from the bytes (never the name), size and pixel limits."""
from __future__ import annotations

import hashlib
import io
import re
import warnings

from PIL import Image

from service.core.errors import ApiError, field_error
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


def image_dimensions(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) as the image is meant to be seen (EXIF orientation 5-8 swaps the sides,
    as the workers' decoder turns the pixels upright), after refusing bombs from the header and
    broken files by decoding the first frame.

    The header is checked before any pixel is decoded. Then the first frame is decoded (within
    the pixel limit; JPEGs at 1/8 scale, which still reads every byte of the scan), so a
    truncated or corrupt file is refused here, with a 422 naming `file`, instead of failing a
    job later: `verify()` alone misses truncated JPEG, GIF, TIFF and BMP data, and PNGs whose
    image data is shorter than their header says. Animated images: the first frame is what
    every job uses (models/media.py), so it is the one checked."""
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


def build_upload(tenant: str, filename: str | None, data: bytes, max_pixels: int) -> UploadRecord:
    if not data:
        raise field_error("file", "the file is empty")
    content_type = sniff_content_type(data[:32])
    if content_type is None:
        raise ApiError(415, "Unsupported media type",
                       "file: content is not a supported image (PNG, JPEG, WebP, GIF, BMP, TIFF), video (MP4, WebM) or ZIP",
                       code="unsupported_media_type", errors=[{"field": "file", "message": "unsupported content"}])
    width = height = None
    if content_type in IMAGE_TYPES:
        width, height = image_dimensions(data, max_pixels)
    upload_id = new_id("upl")
    name = _SAFE_NAME.sub("_", (filename or "upload"))[:200] or "upload"
    return UploadRecord(id=upload_id, tenant=tenant, filename=name, content_type=content_type, size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), key=f"uploads/{tenant}/{upload_id}",
                        width=width, height=height)
