"""ZIP archives of images, checked before any job runs: entry count, declared and actual sizes
(zip bombs), and that every entry is an image. Shared by the API (validation) and the worker
(extraction), so both apply the same limits."""
from __future__ import annotations

import io
import posixpath
import warnings
import zipfile
import zlib
from dataclasses import dataclass

from PIL import Image

from service.uploads import IMAGE_TYPES, sniff_content_type

MAX_ENTRIES = 1000
MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200  # uncompressed / compressed per entry: beyond this it is a bomb, not a photo


# What reading a hostile entry can raise: a bad CRC or header (BadZipFile), garbage deflate data
# (zlib.error), an unsupported compression method (NotImplementedError), a truncated stream
# (EOFError), ... Every one of them is the archive's fault, never a server error.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError,
                KeyError)


class ArchiveError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    size: int


def _skipped(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.endswith("/") or name.startswith("__MACOSX/") or base.startswith(".") or not base


def image_entries(data: bytes, max_pixels: int | None = None) -> list[Entry]:
    """The image entries of a ZIP, or ArchiveError naming the first problem. With `max_pixels`,
    each image's header is read too and an image beyond the limit is refused (a decompression
    bomb inside an archive)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not _skipped(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ArchiveError(f"not a readable ZIP archive ({exc})")
    if not infos:
        raise ArchiveError("the archive holds no images")
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError(f"{len(infos)} entries; the limit is {MAX_ENTRIES}")
    total = 0
    entries = []
    for info in infos:
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{info.filename}: encrypted entries are not supported")
        total += info.file_size
        if info.file_size > MAX_ENTRY_BYTES or total > MAX_TOTAL_BYTES or \
                info.file_size > MAX_RATIO * max(info.compress_size, 1) + 65536:
            raise ArchiveError(f"{info.filename}: uncompressed size {info.file_size} is beyond the limits "
                               f"({MAX_ENTRY_BYTES} per entry, {MAX_TOTAL_BYTES} in all, ratio {MAX_RATIO}:1)")
        try:
            with zf.open(info) as f:
                head = f.read(32)
        except _READ_ERRORS as exc:
            raise ArchiveError(f"{info.filename}: corrupt entry ({type(exc).__name__}: {exc})")
        if sniff_content_type(head) not in IMAGE_TYPES:
            raise ArchiveError(f"{info.filename}: not an image")
        if max_pixels is not None:
            _check_pixels(zf, info, max_pixels)
        entries.append(Entry(info.filename, info.file_size))
    return entries


def _check_pixels(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_pixels: int) -> None:
    """Read the entry's image header (PIL reads only what it needs) and refuse a bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with zf.open(info) as f, Image.open(f) as img:
                width, height = img.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ArchiveError(f"{info.filename}: image exceeds the pixel limit of {max_pixels}")
    except Exception as exc:  # PIL and zipfile raise many types for broken data
        raise ArchiveError(f"{info.filename}: not a readable image ({type(exc).__name__}: {exc})")
    if width * height > max_pixels:
        raise ArchiveError(f"{info.filename}: image is {width}x{height} = {width * height} pixels; "
                           f"the limit is {max_pixels}")


def read_images(data: bytes, max_pixels: int | None = None) -> list[tuple[str, bytes]]:
    """Extract the image entries, enforcing the limits on the bytes actually inflated (an entry
    whose headers understate its size fails its CRC or size check here)."""
    entries = image_entries(data, max_pixels)
    zf = zipfile.ZipFile(io.BytesIO(data))
    out = []
    for entry in entries:
        try:
            with zf.open(entry.name) as f:
                blob = f.read(MAX_ENTRY_BYTES + 1)
        except _READ_ERRORS as exc:
            raise ArchiveError(f"{entry.name}: corrupt entry ({type(exc).__name__}: {exc})")
        if len(blob) > MAX_ENTRY_BYTES or len(blob) != entry.size:
            raise ArchiveError(f"{entry.name}: inflates to other than its declared size")
        out.append((entry.name, blob))
    return out


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
