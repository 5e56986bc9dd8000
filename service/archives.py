"""ZIP archives of images, checked before any job runs: entry count, declared and actual sizes
(zip bombs), that every entry is an image, each entry's pixels and their sum (from the image
headers, nothing decoded). Shared by the API (validation at submission) and the worker
(extraction, one entry at a time), so both apply the same limits."""
from __future__ import annotations

import io
import posixpath
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

from service import imagescan
from service.imagescan import StructureLimits
from service.uploads import IMAGE_TYPES, sniff_content_type

MAX_ENTRIES = 1000
MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200  # uncompressed / compressed per entry: beyond this it is a bomb, not a photo
HEAD_BYTES = 64 * 1024  # read of each entry at submission to learn its size (doubled while a JPEG needs more)


# What reading a hostile entry can raise: a bad CRC or header (BadZipFile), garbage deflate data
# (zlib.error), an unsupported compression method (NotImplementedError), a truncated stream
# (EOFError), ... Every one of them is the archive's fault, never a server error.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError,
                KeyError)


class ArchiveError(ValueError):
    def __init__(self, message: str, limit: int | None = None):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    width: int = 0
    height: int = 0


def _skipped(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.endswith("/") or name.startswith("__MACOSX/") or base.startswith(".") or not base


def image_entries(data: bytes, limits: StructureLimits | None = None, max_total_pixels: int | None = None) -> list[Entry]:
    """The image entries of a ZIP, or ArchiveError naming the first problem. With `limits`,
    each image's header is read too (its first bytes; nothing is decoded) and an image beyond
    the per-image budget is refused; with `max_total_pixels`, so is an archive whose entries add
    up to more pixels (checked as the headers are read: a 1000-entry archive of max-size images
    stops at the entry that crosses the budget)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not _skipped(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ArchiveError(f"not a readable ZIP archive ({exc})")
    if not infos:
        raise ArchiveError("the archive holds no images")
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError(f"{len(infos)} entries; the limit is {MAX_ENTRIES}")
    total = pixels = 0
    entries = []
    for info in infos:
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{info.filename}: encrypted entries are not supported")
        total += info.file_size
        if info.file_size > MAX_ENTRY_BYTES or total > MAX_TOTAL_BYTES or \
                info.file_size > MAX_RATIO * max(info.compress_size, 1) + 65536:
            raise ArchiveError(f"{info.filename}: uncompressed size {info.file_size} is beyond the limits "
                               f"({MAX_ENTRY_BYTES} per entry, {MAX_TOTAL_BYTES} in all, ratio {MAX_RATIO}:1)")
        width = height = 0
        if limits is not None:
            width, height = _header_size(zf, info, limits)
            pixels += width * height
            if max_total_pixels is not None and pixels > max_total_pixels:
                raise ArchiveError(f"{info.filename}: the entries up to this one add up to {pixels} pixels; the "
                                   f"limit is {max_total_pixels} (VISIONJOBS_MAX_JOB_PIXELS)", limit=max_total_pixels)
        else:
            try:
                with zf.open(info) as f:
                    head = f.read(32)
            except _READ_ERRORS as exc:
                raise ArchiveError(f"{info.filename}: corrupt entry ({type(exc).__name__}: {exc})")
            if sniff_content_type(head) not in IMAGE_TYPES:
                raise ArchiveError(f"{info.filename}: not an image")
        entries.append(Entry(info.filename, info.file_size, width, height))
    return entries


def _header_size(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: StructureLimits) -> tuple[int, int]:
    """(width, height) from the entry's first bytes (more only when the header lies further in:
    a JPEG with a large EXIF or ICC segment before its frame header)."""
    want = HEAD_BYTES
    try:
        with zf.open(info) as f:
            head = f.read(want)
            while True:
                if sniff_content_type(head[:32]) not in IMAGE_TYPES:
                    raise ArchiveError(f"{info.filename}: not an image")
                try:
                    s = imagescan.scan(head, limits, partial=True)
                    return s.width, s.height
                except imagescan.NeedMore:
                    if len(head) < want:  # the whole entry is read
                        raise ArchiveError(f"{info.filename}: not a readable image (no header)")
                    head += f.read(want)
                    want *= 2
    except imagescan.StructureError as exc:
        raise ArchiveError(f"{info.filename}: {exc}" + (f" (VISIONJOBS_{exc.setting.upper()})" if exc.setting else ""),
                           limit=exc.limit)
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{info.filename}: corrupt entry ({type(exc).__name__}: {exc})")


def iter_images(data: bytes, limits: StructureLimits | None = None,
                max_total_pixels: int | None = None) -> Iterator[tuple[str, bytes]]:
    """The image entries one at a time (the caller decodes each before the next is inflated),
    after checking every header; the limits are enforced on the bytes actually inflated (an
    entry whose headers understate its size fails its CRC or size check here)."""
    entries = image_entries(data, limits, max_total_pixels)
    zf = zipfile.ZipFile(io.BytesIO(data))
    for entry in entries:
        try:
            with zf.open(entry.name) as f:
                blob = f.read(MAX_ENTRY_BYTES + 1)
        except _READ_ERRORS as exc:
            raise ArchiveError(f"{entry.name}: corrupt entry ({type(exc).__name__}: {exc})")
        if len(blob) > MAX_ENTRY_BYTES or len(blob) != entry.size:
            raise ArchiveError(f"{entry.name}: inflates to other than its declared size")
        yield entry.name, blob


def check_archive(ctx, data: bytes) -> tuple[int, list[str]]:
    """The submission check of an archive upload: 422 naming `archive` (and the limit), else
    the sum of its entries' pixels (for the job's pixel budget) and their names."""
    from service.core.errors import field_error

    settings = ctx.settings
    try:
        entries = image_entries(data, StructureLimits.from_settings(settings), settings.max_job_pixels)
    except ArchiveError as exc:
        raise field_error("archive", str(exc), **({"limit": exc.limit} if exc.limit is not None else {}))
    return sum(e.width * e.height for e in entries), [e.name for e in entries]


# The folders of a labelled archive (anomaly datasets as anomalib's Folder reads them); the
# worker groups the entries with models/anomaly/folder.py, which reads the same names (a test
# checks that the two agree).
FOLDERS = {"normal": "normal", "good": "normal", "abnormal": "abnormal", "mask": "mask", "masks": "mask",
           "ground_truth": "mask"}


def folder_counts(names: list[str]) -> dict[str, int]:
    """Images per folder of an archive: ``{"normal", "abnormal", "mask"}``. An archive with no
    entry in one of ``FOLDERS`` is flat: every entry is a normal image. In a labelled archive
    (one common top folder is ignored) every entry must sit under ``normal/`` (or ``good/``),
    ``abnormal/`` or ``mask/``; ArchiveError names the first that does not."""
    parts = [posixpath.normpath(n).split("/") for n in names]
    if not any(part.lower() in FOLDERS for p in parts for part in p[:-1]):
        return {"normal": len(names), "abnormal": 0, "mask": 0}
    if all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1 and parts[0][0].lower() not in FOLDERS:
        parts = [p[1:] for p in parts]
    counts = {"normal": 0, "abnormal": 0, "mask": 0}
    for name, p in zip(names, parts):
        kind = FOLDERS.get(p[0].lower()) if len(p) > 1 else None
        if kind is None:
            raise ArchiveError(f"{name!r} is not under normal/, abnormal/ or mask/ (the folders of a labelled archive)")
        counts[kind] += 1
    if not counts["normal"]:
        raise ArchiveError("no images under normal/")
    if counts["mask"] > counts["abnormal"]:
        raise ArchiveError(f"{counts['mask']} masks for {counts['abnormal']} abnormal images")
    return counts
