"""Image structure read from the bytes, before a single pixel is decoded.

Decoding cost is not proportional to file size: a 130 KB progressive JPEG that repeats one
33-byte refinement scan 1000 times costs libjpeg 12 s (every scan is a pass over every block),
a PNG of two million empty chunks costs PIL 10 s of Python, an animated GIF's frames multiply
its canvas. So the work a file asks for is counted here first, from the container structure
alone (lengths are followed, entropy-coded data is skipped with one regex search, nothing is
inflated), and refused above the budget. The walk itself is bounded: it stops at the first
count beyond its limit, and every loop step consumes at least a few bytes.

What is counted, per format:
- PNG / APNG: chunks (each is a step of PIL's Python chunk loop), frames (fcTL chunks).
- JPEG: marker segments, fill bytes between them (PIL reads each in Python), standalone
  markers, scans (SOS markers: progressive files have about 10).
- GIF: blocks (extensions, image descriptors) plus short data sub-blocks (encoders write
  255-byte sub-blocks; a file of 1-byte ones makes any walker slow), frames, and the canvas,
  which grows to cover every frame (PIL enlarges it the same way).
- WebP: RIFF chunks, frames (ANMF), canvas (VP8X) or frame size (VP8/VP8L).
- TIFF: IFDs (pages = frames), directory entries plus strips/tiles (chunks).
- BMP: the header only.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class StructureLimits:
    max_pixels: int          # canvas width x height
    max_frames: int          # frames of an animation (pages of a TIFF)
    max_frame_pixels: int    # frames x canvas pixels
    max_scans: int           # JPEG scans
    max_chunks: int          # chunks / segments / blocks / directory entries

    @classmethod
    def from_settings(cls, s) -> "StructureLimits":
        return cls(s.max_image_pixels, s.max_image_frames, s.max_frame_pixels, s.max_image_scans, s.max_image_chunks)


@dataclass(frozen=True)
class Structure:
    format: str
    width: int
    height: int
    frames: int = 1
    scans: int = 0
    chunks: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


class StructureError(ValueError):
    """Beyond a budget (`setting` names the VISIONJOBS_ setting, `limit` its value) or not
    parseable as the format its signature claims (`setting` None)."""

    def __init__(self, message: str, setting: str | None = None, limit: int | None = None):
        super().__init__(message)
        self.setting, self.limit = setting, limit


class NeedMore(StructureError):
    """`partial` scan: the head ends before the canvas size is known; read more of the file."""


class _Counter:
    def __init__(self, limits: StructureLimits | None):
        self.limits, self.chunks, self.scans, self.frames = limits, 0, 0, 0

    def chunk(self, n: int = 1) -> None:
        self.chunks += n
        if self.limits and self.chunks > self.limits.max_chunks:
            raise StructureError(f"more than {self.limits.max_chunks} chunks/segments/blocks (a padded file)",
                                 "max_image_chunks", self.limits.max_chunks)

    def scan(self) -> None:
        self.scans += 1
        if self.limits and self.scans > self.limits.max_scans:
            raise StructureError(f"more than {self.limits.max_scans} JPEG scans", "max_image_scans",
                                 self.limits.max_scans)

    def frame(self) -> None:
        self.frames += 1
        if self.limits and self.frames > self.limits.max_frames:
            raise StructureError(f"more than {self.limits.max_frames} frames", "max_image_frames",
                                 self.limits.max_frames)


def scan(data: bytes, limits: StructureLimits | None = None, *, partial: bool = False) -> Structure:
    """The structure of an image file, refused (StructureError) beyond `limits`.

    `partial`: `data` is only the head of the file (an archive entry's first bytes): stop with
    what is known once the canvas size is, without complaining about the missing rest."""
    head = bytes(data[:12])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        s = _png(data, _Counter(limits), partial)
    elif head.startswith(b"\xff\xd8\xff"):
        s = _jpeg(data, _Counter(limits), partial)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        s = _gif(data, _Counter(limits), partial)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        s = _webp(data, _Counter(limits), partial)
    elif head[:4] in (b"II*\x00", b"MM\x00*"):
        s = _tiff(data, _Counter(limits), partial)
    elif head[:2] == b"BM":
        s = _bmp(data)
    else:
        raise StructureError("not an image format this service reads")
    if s.width < 1 or s.height < 1:
        raise StructureError(f"the {s.format} header declares {s.width}x{s.height} pixels")
    if limits:
        if s.pixels > limits.max_pixels:
            raise StructureError(f"image is {s.width}x{s.height} = {s.pixels} pixels; the limit is {limits.max_pixels}",
                                 "max_image_pixels", limits.max_pixels)
        if s.frames > 1 and s.frames * s.pixels > limits.max_frame_pixels:
            raise StructureError(f"{s.frames} frames x {s.pixels} pixels = {s.frames * s.pixels}; the limit is "
                                 f"{limits.max_frame_pixels}", "max_frame_pixels", limits.max_frame_pixels)
    return s


# --- PNG ------------------------------------------------------------------------------------

def _png(d: bytes, c: _Counter, partial: bool) -> Structure:
    pos, n, width, height, fctl = 8, len(d), 0, 0, 0
    while pos + 8 <= n:
        length, ctype = struct.unpack_from(">I4s", d, pos)
        c.chunk()
        if pos == 8:
            if ctype != b"IHDR" or length != 13 or pos + 21 > n:
                raise StructureError("PNG does not start with an IHDR chunk")
            width, height = struct.unpack_from(">II", d, pos + 8)
            if partial:
                break
        elif ctype == b"fcTL":
            c.frame()
            fctl += 1
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if not width:
        raise StructureError("PNG is truncated before its header")
    return Structure("PNG", width, height, max(fctl, 1), 0, c.chunks)


# --- JPEG -----------------------------------------------------------------------------------

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# The next marker after entropy-coded data: 0xFF followed by anything but a stuffed zero, a
# restart marker (RST0-7, part of the scan) or another 0xFF (fill).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff+")


def _jpeg(d: bytes, c: _Counter, partial: bool) -> Structure:
    pos, n, width, height = 2, len(d), 0, 0
    while pos + 4 <= n:
        if d[pos] != 0xFF:
            raise StructureError(f"JPEG has no marker at byte {pos}")
        if d[pos + 1] == 0xFF:  # fill bytes before a marker: PIL reads them one at a time, in Python
            end = _FILL.match(d, pos).end() - 1
            c.chunk(end - pos)
            pos = end
            if pos + 4 > n:
                break
        marker = d[pos + 1]
        if marker == 0xD9:  # EOI: what follows (an MPO's second picture, trailing junk) is not decoded
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # standalone markers
            c.chunk()
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", d, pos + 2)
        if length < 2:
            raise StructureError(f"JPEG segment at byte {pos} has length {length}")
        c.chunk()
        if marker in _SOF and not width:
            if pos + 9 > n:
                break
            height, width = struct.unpack_from(">HH", d, pos + 5)
            if partial:
                break
        end = pos + 2 + length
        if marker == 0xDA:
            c.scan()
            m = _NEXT_MARKER.search(d, end)
            end = m.start() if m else n
        pos = end
    if not width and partial:
        raise NeedMore("JPEG head ends before the frame header")
    if not width:
        raise StructureError("JPEG has no frame header (SOF) before its data ends")
    return Structure("JPEG", width, height, 1, c.scans, c.chunks)


# --- GIF ------------------------------------------------------------------------------------

def _gif_sub_blocks(d: bytes, pos: int, c: _Counter) -> int:
    n = len(d)
    while pos < n:
        size = d[pos]
        if size == 0:
            return pos + 1
        if size < 255:
            c.chunk()
        pos += size + 1
    return pos


def _gif(d: bytes, c: _Counter, partial: bool) -> Structure:
    if len(d) < 13:
        raise StructureError("GIF is truncated before its screen descriptor")
    width, height, flags = struct.unpack_from("<HHB", d, 6)
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    n, first = len(d), None
    while pos < n:
        block = d[pos]
        if block == 0x3B:  # trailer
            break
        c.chunk()
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _gif_sub_blocks(d, pos + 2, c)
        elif block == 0x2C:  # image descriptor
            if pos + 10 > n:
                break
            c.frame()
            left, top, w, h, lflags = struct.unpack_from("<HHHHB", d, pos + 1)
            width, height = max(width, left + w), max(height, top + h)  # PIL grows the canvas likewise
            first = first or (width, height)
            if partial:
                break
            pos += 10 + (3 * 2 ** ((lflags & 7) + 1) if lflags & 0x80 else 0)
            pos = _gif_sub_blocks(d, pos + 1, c)  # +1: the LZW minimum code size
        elif c.frames:
            break  # garbage after a frame: decoders stop here too
        else:  # before the first frame PIL would skip it one byte at a time, in Python
            raise StructureError(f"GIF has an unknown block at byte {pos}")
    if partial and first is None:
        raise NeedMore("GIF head ends before the first frame")
    return Structure("GIF", width, height, max(c.frames, 1), 0, c.chunks)


# --- WebP -----------------------------------------------------------------------------------

def _webp(d: bytes, c: _Counter, partial: bool) -> Structure:
    pos, n, width, height, canvas = 12, len(d), 0, 0, False
    while pos + 8 <= n:
        fourcc, size = struct.unpack_from("<4sI", d, pos)
        c.chunk()
        body = pos + 8
        if fourcc == b"VP8X" and body + 10 <= n:
            width = 1 + int.from_bytes(d[body + 4:body + 7], "little")
            height = 1 + int.from_bytes(d[body + 7:body + 10], "little")
            canvas = True
        elif fourcc == b"VP8 " and not canvas and body + 10 <= n:
            width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", d, body + 6))
        elif fourcc == b"VP8L" and not canvas and body + 5 <= n:
            bits = int.from_bytes(d[body + 1:body + 5], "little")
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif fourcc == b"ANMF":
            c.frame()
        if partial and width:
            break
        pos = body + size + (size & 1)
    if not width and partial:
        raise NeedMore("WebP head ends before the frame header")
    if not width:
        raise StructureError("WebP has no VP8/VP8L/VP8X header")
    return Structure("WEBP", width, height, max(c.frames, 1), 0, c.chunks)


# --- TIFF -----------------------------------------------------------------------------------

def _tiff(d: bytes, c: _Counter, partial: bool) -> Structure:
    e = "<" if d[:2] == b"II" else ">"
    n = len(d)
    (offset,) = struct.unpack_from(e + "I", d, 4)
    width = height = 0
    seen: set[int] = set()
    while offset and offset + 2 <= n and offset not in seen:
        seen.add(offset)
        c.frame()
        (count,) = struct.unpack_from(e + "H", d, offset)
        c.chunk(max(count, 1))
        w = h = 0
        for i in range(count):
            at = offset + 2 + 12 * i
            if at + 12 > n:
                break
            tag, typ, values = struct.unpack_from(e + "HHI", d, at)
            value = struct.unpack_from(e + ("H" if typ == 3 else "I"), d, at + 8)[0]
            if tag == 256:
                w = value
            elif tag == 257:
                h = value
            elif tag in (273, 324):  # StripOffsets / TileOffsets: one decoder call each
                c.chunk(values)
        width, height = max(width, w), max(height, h)
        if partial and width:
            break
        next_at = offset + 2 + 12 * count
        offset = struct.unpack_from(e + "I", d, next_at)[0] if next_at + 4 <= n else 0
    if not width and partial:
        raise NeedMore("TIFF head ends before the first directory")
    if not width:
        raise StructureError("TIFF has no readable image directory")
    return Structure("TIFF", width, height, max(c.frames, 1), 0, c.chunks)


# --- BMP ------------------------------------------------------------------------------------

def _bmp(d: bytes) -> Structure:
    if len(d) < 26:
        raise StructureError("BMP is truncated before its header")
    (header,) = struct.unpack_from("<I", d, 14)
    if header == 12:
        width, height = struct.unpack_from("<HH", d, 18)
    else:
        width, height = struct.unpack_from("<ii", d, 18)
    return Structure("BMP", abs(width), abs(height))
