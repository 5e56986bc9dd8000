"""Turning what a caller has (a path, bytes, a file object, a PIL image, a numpy array) into
the bytes of one ``POST /v1/uploads``. PIL and numpy are only touched when given."""
from __future__ import annotations

import mimetypes
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from visionjobs_client.models import UPLOAD_ID_PATTERN, Upload

_UPLOAD_ID = re.compile(UPLOAD_ID_PATTERN)

#: anything ``Client.upload`` accepts (PIL images and numpy arrays are typed loosely so the
#: client never imports them)
UploadSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


def is_upload_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_UPLOAD_ID.match(value))


def upload_id_of(value: Any) -> Optional[str]:
    """The upload id when ``value`` already names an upload (an ``Upload`` or an id string that
    is not also an existing file), else None: ``value`` is something to upload. An
    ``https://`` URL or a ``data:`` URI is passed on as it is: the server fetches it."""
    if isinstance(value, Upload):
        return value.id
    if isinstance(value, str) and value[:8].lower().startswith(("http://", "https://", "data:")):
        return value
    if is_upload_id(value) and not os.path.exists(value):
        return value
    return None


@dataclass
class EncodedFile:
    filename: str
    content: bytes
    content_type: str

    def multipart(self) -> dict[str, tuple[str, bytes, str]]:
        return {"file": (self.filename, self.content, self.content_type)}


def _is_pil_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "save") and hasattr(obj, "mode")


def _is_ndarray(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "__array_interface__") and hasattr(obj, "dtype")


def encode(source: UploadSource, filename: Optional[str] = None, content_type: Optional[str] = None) -> EncodedFile:
    """Bytes, filename and declared type for one upload (the server reads the real type from
    the bytes; the declared one is informational)."""
    if isinstance(source, Upload):
        raise TypeError(f"{source.id} is already uploaded")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        name = filename or path.name
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name, data = filename or "upload", bytes(source)
    elif _is_pil_image(source):
        name, data = filename or "image.png", _pil_png(source)
        content_type = content_type or "image/png"
    elif _is_ndarray(source):
        name, data = filename or "image.png", array_png(source)
        content_type = content_type or "image/png"
    elif hasattr(source, "read"):
        data = source.read()
        if isinstance(data, str):
            raise TypeError("open the file in binary mode ('rb')")
        raw_name = getattr(source, "name", None)
        name = filename or (os.path.basename(raw_name) if isinstance(raw_name, str) else "upload")
    else:
        raise TypeError(f"cannot upload a {type(source).__name__}: give a path, bytes, a binary file object, "
                        "a PIL image or a numpy array")
    ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return EncodedFile(name, data, ctype)


def _pil_png(image: Any) -> bytes:
    import io

    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (L, LA, RGB, RGBA)


def array_png(array: Any) -> bytes:
    """An HxW, HxWx1..4 array as an 8-bit PNG, without Pillow. bool -> 0/255; floats are read
    as [0, 1]; other integers must lie in 0..255."""
    import numpy as np

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in _COLOR_TYPES) or 0 in a.shape:
        raise ValueError(f"an image array is HxW or HxWxC with C in 1..4, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("the image array holds NaN or infinity")
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"{a.dtype} image values must lie in 0..255 (or pass floats in [0, 1])")
        a = a.astype(np.uint8)
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    rows = np.ascontiguousarray(a).reshape(h, w * channels)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
