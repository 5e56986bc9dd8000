"""ZIP archives of images, checked before any job runs: entry count, declared and actual sizes
(zip bombs), and that every entry is an image. Shared by the API (validation) and the worker
(extraction), so both apply the same limits."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from service.uploads import IMAGE_TYPES, sniff_content_type

MAX_ENTRIES = 1000
MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200  # uncompressed / compressed per entry: beyond this it is a bomb, not a photo


class ArchiveError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    size: int


def _skipped(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.endswith("/") or name.startswith("__MACOSX/") or base.startswith(".") or not base


def image_entries(data: bytes) -> list[Entry]:
    """The image entries of a ZIP, or ArchiveError naming the first problem."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not _skipped(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
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
        with zf.open(info) as f:
            head = f.read(32)
        if sniff_content_type(head) not in IMAGE_TYPES:
            raise ArchiveError(f"{info.filename}: not an image")
        entries.append(Entry(info.filename, info.file_size))
    return entries


def read_images(data: bytes) -> list[tuple[str, bytes]]:
    """Extract the image entries, enforcing the limits on the bytes actually inflated."""
    entries = image_entries(data)
    zf = zipfile.ZipFile(io.BytesIO(data))
    out = []
    for entry in entries:
        with zf.open(entry.name) as f:
            blob = f.read(MAX_ENTRY_BYTES + 1)
        if len(blob) > MAX_ENTRY_BYTES or len(blob) != entry.size:
            raise ArchiveError(f"{entry.name}: inflates to other than its declared size")
        out.append((entry.name, blob))
    return out
