"""Image decode/encode at the edge of the models: bytes in, 8-bit RGB PIL images out.

Uploads arrive in every mode PIL knows (camera JPEGs with EXIF rotation, CMYK print files,
16-bit PNGs, palette GIFs, RGBA with transparency). Pipelines want one thing: 8-bit sRGB
RGB, upright. Everything that turns the former into the latter lives here.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_FORMAT_ALIASES = {"jpg": "jpeg"}


def _to_srgb(img: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile when there is one (CMYK print files, wide-
    gamut phone photos); without one, or if littlecms refuses, PIL's plain conversion."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # a broken or unsupported profile must not fail the job
        return img


def _high_bit_gray_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale -> 8-bit L by scaling, not clipping (PIL's
    convert('L') clips 16-bit values above 255 to white)."""
    arr = np.asarray(img)
    if img.mode == "F":
        scale = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0 / 255.0
        arr = np.nan_to_num(arr.astype(np.float64)) * scale * 255.0
    else:
        arr = arr.astype(np.float64)
        if arr.max(initial=0) > 255:  # 16-bit data (I;16 or I holding 0..65535)
            arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB. Transparency is composited on white (what a viewer
    shows for a transparent background), not dropped (dropping exposes arbitrary colours)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_bit_gray_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    if img.mode in ("RGB", "CMYK"):
        img = _to_srgb(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(data: bytes, max_pixels: int | None = None, *, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode uploaded bytes to an upright 8-bit RGB image (first frame of an animation).

    Raises ValueError for data that is not an image or exceeds `max_pixels` (checked from
    the header, before the pixels are decoded). `size`: resize to (width, height) right after
    decoding (PIL bilinear, antialiased when shrinking), so a caller that needs many images at
    a working size holds one full-size image at a time, not all of them."""
    return decode_image(data, max_pixels, size=size)[0]


def decode_image(data: bytes, max_pixels: int | None = None, *,
                 size: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`, also returning the upright (width, height) the image had before `size`."""
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a decodable image ({exc})") from exc
    except Image.DecompressionBombError as exc:  # a header beyond 2x PIL's own limit: an Exception, not OSError
        raise ValueError(f"image exceeds the decoder's pixel limit ({exc})") from exc
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ValueError(f"image has {img.width}x{img.height} pixels, above the limit of {max_pixels}")
    try:
        img.seek(0)  # animated GIF/WebP/APNG: the first frame only
        img.load()
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"image data is truncated or corrupt ({exc})") from exc
    try:
        img = ImageOps.exif_transpose(img)  # camera orientation tag -> upright pixels
    except Exception:  # malformed EXIF: keep the pixels as stored
        pass
    img = to_rgb(img)
    upright = img.size
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.BILINEAR)
    return img, upright


def encode_image(img: Image.Image, format: str = "png", quality: int = 95) -> tuple[bytes, str]:
    """Encode to PNG (lossless), JPEG or WebP (lossy, `quality`). Returns (bytes, content type)."""
    fmt = _FORMAT_ALIASES.get(format.lower(), format.lower())
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"format has to be one of {', '.join(CONTENT_TYPES)}, got {format!r}")
    if img.mode not in ("RGB", "L"):
        img = to_rgb(img)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        img.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue(), CONTENT_TYPES[fmt]
