"""Builders for hostile and unusual inputs: every file is made in memory, by hand where the
point is a header that lies (so a "20000x20000" image is a few hundred bytes on disk)."""
from __future__ import annotations

import io
import struct
import tempfile
import zipfile
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import photo, png_bytes

# --- images ------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels but whose IDAT holds almost nothing:
    the classic decompression-bomb header, ~100 bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=kw.pop("quality", 95), **kw)
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to claim width x height."""
    data = bytearray(jpeg_bytes(photo(32, 24)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and first image descriptor claim width x height."""
    buf = io.BytesIO()
    photo(16, 16).convert("P").save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    struct.pack_into("<HH", data, 6, width, height)
    at = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[at] == 0x21:  # extension blocks: label, then sub-blocks until a zero length
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    assert data[at] == 0x2C  # the image descriptor
    struct.pack_into("<HH", data, at + 5, width, height)
    return bytes(data)


def cmyk_jpeg(img: Image.Image) -> bytes:
    return jpeg_bytes(img.convert("CMYK"))


def gray16_png(gray8: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG holding gray8 * 257 (so its exact 8-bit value is gray8)."""
    buf = io.BytesIO()
    Image.fromarray(gray8.astype(np.uint16) * 257).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    return buf.getvalue()


def palette_png(img: Image.Image) -> bytes:
    return png_bytes(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64))


def palette_transparent_gif(img: Image.Image) -> bytes:
    """A palette GIF whose index 0 is transparent (the left quarter uses it)."""
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=63)
    arr = np.asarray(pal).copy() + 1
    arr[:, : img.width // 4] = 0
    out = Image.fromarray(arr.astype(np.uint8), mode="P")
    out.putpalette([0, 0, 0] + pal.getpalette()[: 63 * 3])
    buf = io.BytesIO()
    out.save(buf, format="GIF", transparency=0)
    return buf.getvalue()


def rgba_png(img: Image.Image) -> bytes:
    """RGBA with a horizontal alpha ramp: transparent on the left, opaque on the right."""
    rgba = img.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, img.width).astype(np.uint8), (img.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    return png_bytes(rgba)


def exif_rotated_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif)


def animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return buf.getvalue()


def composite_on_white(rgba: Image.Image) -> Image.Image:
    arr = np.asarray(rgba.convert("RGBA")).astype(np.float64)
    a = arr[..., 3:4] / 255.0
    return Image.fromarray(np.clip(np.rint(arr[..., :3] * a + 255.0 * (1 - a)), 0, 255).astype(np.uint8))


# --- videos ------------------------------------------------------------------------------


def _mp4(frames: list[np.ndarray], pts: list[int] | None = None, fps: int = 8, size: int = 16,
         time_base: Fraction | None = None) -> bytes:
    import av

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "v.mp4")
        with av.open(str(path), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1))
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = {"preset": "ultrafast"}
            if not frames:
                container.start_encoding()  # header only: no sample is ever written
            for i, arr in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                frame.pts = pts[i] if pts else i
                if time_base is not None:
                    frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.read_bytes()


def clip_mp4(frames: int = 8, size: int = 64) -> bytes:
    """A real photo panning right."""
    from models.video.media import encode_mp4

    base = np.asarray(photo(size + 2 * frames, size))
    return encode_mp4(np.stack([base[:, 2 * i: 2 * i + size] for i in range(frames)]), fps=8)


def zero_frame_mp4() -> bytes:
    data = _mp4([])
    assert data[4:8] == b"ftyp" and len(data) > 100
    return data


def long_mp4(seconds: int) -> bytes:
    """Two 16x16 frames, the second shown at `seconds`: a tiny file over the duration limit."""
    black = np.zeros((16, 16, 3), np.uint8)
    return _mp4([black, black], pts=[0, seconds], fps=1)


def many_frames_mp4(frames: int) -> bytes:
    """`frames` 16x16 frames at 1000 fps (10 s): over the frame limit, far under the duration one."""
    black = np.zeros((16, 16, 3), np.uint8)
    return _mp4([black] * frames, fps=1000)


def corrupt_mp4() -> bytes:
    """An `ftyp` box (so it sniffs as MP4) followed by noise."""
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + np.random.default_rng(0).bytes(4000)


# --- archives ----------------------------------------------------------------------------


def zip_of(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb_declared(mib: int = 40) -> bytes:
    """One entry that honestly declares `mib` MiB of zeros (a 1000:1 ratio)."""
    return zip_of({"big.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * (mib << 20)})


def zip_bomb_lying(declare: int = 1000, mib: int = 40, head: bytes = b"\x89PNG\r\n\x1a\n") -> bytes:
    """An entry (`head` then zeros) that inflates to `mib` MiB while its local and central
    headers declare `declare` bytes: only a check of the bytes actually inflated (or the CRC)
    can catch it."""
    real = len(head) + (mib << 20)
    data = bytearray(zip_of({"big.png": head + b"\x00" * (mib << 20)}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed-size field of each header
        at = data.index(sig)
        assert data[at + offset: at + offset + 4] == struct.pack("<I", real)
        data[at + offset: at + offset + 4] = struct.pack("<I", declare)
    return bytes(data)


def zip_corrupt_deflate(image: bytes) -> bytes:
    """A ZIP whose single entry's compressed bytes are overwritten with noise (headers intact)."""
    data = bytearray(zip_of({"a.png": image}))
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    start = 30 + name_len + extra_len
    size = struct.unpack_from("<I", data, 18)[0]
    data[start: start + size] = np.random.default_rng(1).bytes(size)
    return bytes(data)


def zip_encrypted_flag(image: bytes) -> bytes:
    """An entry marked encrypted (general-purpose flag bit 0) in both headers."""
    data = bytearray(zip_of({"a.png": image}, zipfile.ZIP_STORED))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(sig)
        data[at + offset] |= 0x01
    return bytes(data)


def zip_many_entries(n: int) -> bytes:
    return zip_of({f"{i}.png": b"\x89PNG\r\n\x1a\n" for i in range(n)}, zipfile.ZIP_STORED)


def zip_nested(inner: bytes) -> bytes:
    return zip_of({"inner.zip": inner})
