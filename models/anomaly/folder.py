"""Folder datasets split as anomalib's ``Folder`` datamodule does by default (anomalib 1.x:
``test_split_mode="from_dir"``, ``test_split_ratio`` (formerly ``normal_split_ratio``) 0.2,
``val_split_mode="from_test"``, ``val_split_ratio`` 0.5), as pure functions over image lists.

* Every normal image is a training image; the abnormal images (and the optional normal test
  images, anomalib's ``normal_test_dir``) are the test set.
* When the test set has no normal images, ``normal_split_ratio`` of the training images
  move to it (anomalib's ``random_split(train, 0.2)``).
* The validation set is taken from the test set, ``val_split_ratio`` of each label
  (``random_split(test, 0.5, label_aware=True)``).

The subset sizes and permutations are anomalib's ``random_split``: ``floor(n * ratio)`` per
subset, the remainder handed out one by one from the first subset, and
``torch.randperm(n, generator=manual_seed(seed))`` cut into the subsets in order. Deviations:
the seed is always used (anomalib draws unseeded for ``seed`` 0 or None), and a label group
of one image goes to the first subset (anomalib divides by zero there).

Every split is recorded (which input image went where) so that a model can name its data.
Nothing here decodes files: :func:`group_folder_entries` sorts the names of a ZIP's entries
into ``normal/``, ``abnormal/`` and ``mask/`` so that the caller decodes only those.
"""
from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .common import Validation

__all__ = [
    "FolderEntries",
    "FolderSplits",
    "LabeledImages",
    "folder_splits",
    "group_folder_entries",
    "is_folder_layout",
    "split_lengths",
    "split_indices",
]

NORMAL, ABNORMAL, NORMAL_TEST = "normal", "abnormal", "normal_test"


@dataclass
class LabeledImages:
    """Images with labels (0 normal, 1 abnormal), optional defect masks (``None`` for normal
    images; for an abnormal image ``None`` means no mask is known) and where each came from
    (``(source, index)``: source ``"normal"``, ``"abnormal"`` or ``"normal_test"``, index into
    that input list)."""

    images: list = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    masks: list = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def normal(self) -> list:
        return [im for im, y in zip(self.images, self.labels) if y == 0]

    @property
    def abnormal(self) -> list:
        return [im for im, y in zip(self.images, self.labels) if y == 1]

    @property
    def has_masks(self) -> bool:
        """Every abnormal image has a mask (and there is one at least): pixel metrics apply."""
        masks = [m for m, y in zip(self.masks, self.labels) if y == 1]
        return bool(masks) and all(m is not None for m in masks)

    @property
    def abnormal_masks(self) -> list | None:
        return [m for m, y in zip(self.masks, self.labels) if y == 1] if self.has_masks else None

    def as_validation(self) -> Validation:
        """For :func:`calibration.calibrate` (and PatchCore's ``fit_patchcore``)."""
        return Validation(normal=self.normal, abnormal=self.abnormal, abnormal_masks=self.abnormal_masks)

    def counts(self) -> dict:
        return {"normal": int(sum(1 for y in self.labels if y == 0)),
                "abnormal": int(sum(1 for y in self.labels if y == 1))}


@dataclass
class FolderSplits:
    """``train`` (normal images), ``validation`` and ``test`` (:class:`LabeledImages`) and the
    ``record`` of the split: seed, ratios and per split the input indices per source."""

    train: list
    train_sources: list[tuple[str, int]]
    validation: LabeledImages
    test: LabeledImages
    record: dict


def split_lengths(n: int, ratios: Sequence[float]) -> list[int]:
    """anomalib's subset sizes: ``floor(n * r)`` each, the remainder one by one from the first
    subset on (when every floor is 0, all of the remainder goes to the first subset)."""
    lengths = [math.floor(n * r) for r in ratios]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths) if sum(lengths) == 0 else i % sum(lengths)] += 1
    return lengths


def split_indices(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """``random_split`` of ``n`` items into ``1 - ratio`` and ``ratio``: (kept, taken) indices."""
    import torch

    if not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"split ratio must be in (0, 1), got {ratio}")
    if n == 0:
        return [], []
    lengths = split_lengths(n, [1.0 - float(ratio), float(ratio)])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return perm[:lengths[0]], perm[lengths[0]:]


def _labeled(items: list[tuple[str, int, int]], pools: dict, masks: dict) -> LabeledImages:
    out = LabeledImages()
    for source, index, label in items:
        out.images.append(pools[source][index])
        out.labels.append(label)
        out.masks.append(masks.get(index) if source == ABNORMAL else None)
        out.sources.append((source, index))
    return out


def _split_label_aware(items: list[tuple[str, int, int]], ratio: float, seed: int):
    """``random_split(label_aware=True)``: each label (normal first) split on its own."""
    kept, taken = [], []
    for label in (0, 1):
        group = [it for it in items if it[2] == label]
        k, t = split_indices(len(group), ratio, seed)
        kept += [group[i] for i in k]
        taken += [group[i] for i in t]
    return kept, taken


def folder_splits(normal: Sequence, abnormal: Sequence = (), *, normal_test: Sequence = (),
                  abnormal_masks: Sequence | None = None, normal_split_ratio: float = 0.2,
                  val_split_ratio: float = 0.5, seed: int = 0) -> FolderSplits:
    """Split a folder dataset (images: PIL or arrays, kept as given) the way anomalib's
    ``Folder`` does by default; see the module docstring. ``abnormal_masks`` (optional,
    aligned with ``abnormal``; an entry may be ``None``) travel with their images."""
    normal, abnormal, normal_test = list(normal), list(abnormal), list(normal_test)
    if not normal:
        raise ValueError("normal: a folder dataset needs at least one normal (training) image")
    if abnormal_masks is not None and len(abnormal_masks) != len(abnormal):
        raise ValueError(f"abnormal_masks: {len(abnormal_masks)} masks for {len(abnormal)} abnormal images")
    for name, r in (("normal_split_ratio", normal_split_ratio), ("val_split_ratio", val_split_ratio)):
        if not 0.0 < float(r) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {r}")
    pools = {NORMAL: normal, ABNORMAL: abnormal, NORMAL_TEST: normal_test}
    masks = dict(enumerate(abnormal_masks)) if abnormal_masks is not None else {}

    train = list(range(len(normal)))
    # the test set from the directories: abnormal images first, then normal test images
    test = [(ABNORMAL, i, 1) for i in range(len(abnormal))] + [(NORMAL_TEST, i, 0) for i in range(len(normal_test))]
    moved: list[int] = []
    if not normal_test:  # no normal test images: sample them from the training set
        kept, taken = split_indices(len(train), normal_split_ratio, seed)
        train, moved = [train[i] for i in kept], [train[i] for i in taken]
        test += [(NORMAL, i, 0) for i in moved]
    test, val = _split_label_aware(test, val_split_ratio, seed)

    def where(items):
        out: dict[str, list[int]] = {}
        for source, index, _ in items:
            out.setdefault(source, []).append(int(index))
        return out

    validation, test_set = _labeled(val, pools, masks), _labeled(test, pools, masks)
    record = {
        "method": "anomalib Folder (test_split_mode=from_dir, val_split_mode=from_test)",
        "seed": int(seed), "normal_split_ratio": float(normal_split_ratio),
        "val_split_ratio": float(val_split_ratio),
        "inputs": {NORMAL: len(normal), ABNORMAL: len(abnormal), NORMAL_TEST: len(normal_test),
                   "masks": sum(1 for m in masks.values() if m is not None)},
        "train": {NORMAL: [int(i) for i in train]},
        "validation": where(val), "test": where(test),
        "counts": {"train": len(train), "validation": validation.counts(), "test": test_set.counts()},
    }
    return FolderSplits([normal[i] for i in train], [(NORMAL, int(i)) for i in train], validation, test_set, record)


# ------------------------------------------------------------------------- ZIP layout


@dataclass
class FolderEntries:
    """Indices into the entry list: ``normal``, ``abnormal``, and per abnormal image the index
    of its mask entry (or ``None``)."""

    normal: list[int]
    abnormal: list[int]
    abnormal_masks: list[int | None]


_FOLDERS = {"normal": NORMAL, "good": NORMAL, "abnormal": ABNORMAL, "mask": "mask", "masks": "mask",
            "ground_truth": "mask"}


def is_folder_layout(names: Sequence[str]) -> bool:
    """Whether a ZIP's entries use the folder layout (some entry sits in a ``normal/``,
    ``abnormal/`` or ``mask/`` folder, see :func:`group_folder_entries`); else every entry is a
    normal image (a flat archive, or one folder of any other name)."""
    return any(part.lower() in _FOLDERS for n in names for part in posixpath.normpath(n).split("/")[:-1])


def group_folder_entries(names: Sequence[str]) -> FolderEntries:
    """Sort a ZIP's image entry names into ``normal/``, ``abnormal/`` and ``mask/``.

    One common top folder (``dataset/normal/...``) is ignored. Folder names: ``normal`` (or
    ``good``), ``abnormal``, ``mask`` (or ``masks``, ``ground_truth``); a mask belongs to the
    abnormal image with the same path below its folder, with or without a ``_mask`` suffix and
    whatever the extension. Within a folder, entries are taken in name order. Raises
    ValueError naming an entry outside these folders, or a mask without its image.
    """
    parts = [posixpath.normpath(n).split("/") for n in names]
    if parts and all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1 \
            and parts[0][0].lower() not in _FOLDERS:
        parts = [p[1:] for p in parts]
    groups: dict[str, list[tuple[str, int]]] = {NORMAL: [], ABNORMAL: [], "mask": []}
    for i, p in enumerate(parts):
        kind = _FOLDERS.get(p[0].lower()) if len(p) > 1 else None
        if kind is None:
            raise ValueError(f"archive: {names[i]!r} is not under normal/, abnormal/ or mask/")
        groups[kind].append(("/".join(p[1:]), i))
    for g in groups.values():
        g.sort()

    def key(rel: str) -> str:
        stem = posixpath.splitext(rel)[0]
        return stem[:-5] if stem.endswith("_mask") else stem

    abnormal_keys = {key(rel): n for n, (rel, _) in enumerate(groups[ABNORMAL])}
    masks: list[int | None] = [None] * len(groups[ABNORMAL])
    for rel, i in groups["mask"]:
        n = abnormal_keys.get(key(rel))
        if n is None:
            raise ValueError(f"archive: mask {names[i]!r} has no abnormal image of the same name")
        masks[n] = i
    if not groups[NORMAL]:
        raise ValueError("archive: no images under normal/")
    return FolderEntries([i for _, i in groups[NORMAL]], [i for _, i in groups[ABNORMAL]], masks)


def mask_from_image(image) -> np.ndarray:
    """A mask image (any mode) as bool (H, W): nonzero = defect."""
    arr = np.asarray(image.convert("L")) if hasattr(image, "convert") else np.asarray(image)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0
