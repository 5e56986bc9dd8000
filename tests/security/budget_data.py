"""Builders for inputs whose decoding costs far more than their size: repeated JPEG scans,
padded chunks and segments, animations with many frames, and archives of max-size images.
Each is made in memory in milliseconds, mostly by editing a small real file's structure."""
from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

from PIL import Image

from tests.security.hostile_data import _png_chunk

_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(start, marker, end) of every segment after SOI; a scan's end includes its entropy data."""
    pos, out = 2, []
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append((pos, marker, pos + 2))
            break
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            end = _NEXT_MARKER.search(data, end).start()
        out.append((pos, marker, end))
        pos = end
    return out


def progressive_jpeg_repeated_scans(size: int, repeats: int) -> bytes:
    """A solid-grey progressive JPEG whose last scan (a 33-byte AC refinement of the luma, all
    end-of-band runs) is repeated: each copy costs libjpeg a pass over every block (measured:
    12.5 ms per copy at 4096x4096, so 1000 copies are 12 s of CPU for 132 KB)."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 130, 140)).save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    segments = _jpeg_segments(data)
    start, _, end = [s for s in segments if s[1] == 0xDA][-1]
    eoi = segments[-1][0]
    return data[:eoi] + data[start:end] * repeats + data[eoi:]


def jpeg_padded(n: int, marker: int = 0xFE, after_sof: bool = False) -> bytes:
    """A small JPEG with `n` empty segments (COM by default) before its frame header (or after)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    at = 2
    if after_sof:
        at = [s for s in _jpeg_segments(data) if s[1] == 0xC0][0][2]
    return data[:at] + bytes([0xFF, marker, 0, 2]) * n + data[at:]


def jpeg_fill_bytes(n: int) -> bytes:
    """A small JPEG with `n` 0xFF fill bytes before its first marker (legal; PIL's header parser
    reads them one by one: 25 MB of them cost it 24 s)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[:2] + b"\xff" * n + data[2:]


def _png(width: int = 32, height: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def png_padded(n: int, kind: bytes = b"abCd", where: str = "before") -> bytes:
    """A small PNG with `n` empty ancillary chunks before its image data (or after it)."""
    data = _png()
    at = data.index(b"IDAT") - 4 if where == "before" else data.index(b"IEND") - 4
    return data[:at] + _png_chunk(kind, b"") * n + data[at:]


def png_empty_idats(n: int) -> bytes:
    """The image data followed by `n` zero-length IDAT chunks (each a turn of PIL's chunk loop)."""
    data = _png()
    at = data.index(b"IEND") - 4
    return data[:at] + _png_chunk(b"IDAT", b"") * n + data[at:]


def max_size_png(width: int = 4096, height: int = 4096) -> bytes:
    """A valid solid-black RGB PNG of width x height, built without PIL (one deflate of the
    rows): 16.7 MP in about 49 KB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((1 + 3 * width) * height), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def _gif_frame(left: int = 0, top: int = 0) -> bytes:
    # a 1x1 image descriptor without a local colour table, then 1 pixel of LZW data (code size 2)
    return b"\x2c" + struct.pack("<HHHHB", left, top, 1, 1, 0) + b"\x02\x02\x44\x01\x00"


def gif_frames(n: int, width: int = 16, height: int = 16) -> bytes:
    """An animated GIF of `n` 1x1 frames on a width x height canvas (9 bytes per frame)."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return head + loop + _gif_frame() * n + b"\x3b"


def gif_short_sub_blocks(n: int) -> bytes:
    """A one-frame GIF whose comment extension is `n` one-byte sub-blocks."""
    head = b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return head + b"\x21\xfe" + b"\x01x" * n + b"\x00" + _gif_frame() + b"\x3b"


def gif_junk_before_the_frame(n: int) -> bytes:
    """A one-frame GIF with `n` junk bytes before its image descriptor (PIL skips them one by
    one in Python: 25 MB of them are seconds of CPU)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return head + b"\x00" * n + _gif_frame() + b"\x3b"


def apng_frames(n: int, size: int = 8) -> bytes:
    frames = [Image.new("RGB", (size, size), (i % 256, 0, 0)) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], default_image=False)
    return buf.getvalue()


def webp_frames(n: int) -> bytes:
    """An animated WebP of `n` frames: one real ANMF chunk, repeated (RIFF size fixed up)."""
    a, b = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    buf = io.BytesIO()
    a.save(buf, "WEBP", save_all=True, append_images=[b], lossless=True)
    data = buf.getvalue()
    at = data.index(b"ANMF")
    size = struct.unpack_from("<I", data, at + 4)[0]
    chunk = data[at:at + 8 + size + (size & 1)]
    body = data[12:at] + chunk * n
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def tiff_pages(n: int) -> bytes:
    frames = [Image.new("L", (4, 4), i % 256) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def tiff_strips(n: int) -> bytes:
    """An uncompressed 1 x n greyscale TIFF stored as n one-row strips (one decoder call each)."""
    entries = 9
    ifd = 8
    strips_at = ifd + 2 + 12 * entries + 4
    counts_at = strips_at + 4 * n
    pixels_at = counts_at + 4 * n
    tags = [(256, 4, 1, 1), (257, 4, 1, n), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, n, strips_at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, n, counts_at)]
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", entries)
    for tag, typ, count, value in tags:
        out += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 and count == 1
                                                       else struct.pack("<I", value))
    out += struct.pack("<I", 0)
    out += b"".join(struct.pack("<I", pixels_at + i) for i in range(n))
    out += struct.pack("<I", 1) * n
    return out + bytes(i % 256 for i in range(n))


def zip_repeated(entry: bytes, n: int, ext: str = "png") -> bytes:
    """A ZIP of `n` copies of one image (deflated: copies of a solid PNG shrink ~100x)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            zf.writestr(f"img_{i:04d}.{ext}", entry)
    return buf.getvalue()
