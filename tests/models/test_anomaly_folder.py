"""Folder-dataset splits as anomalib's Folder makes them (models/anomaly/folder.py), the ZIP
folder layout, and the segmentation overlay as anomalib's visualiser draws it."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from models.anomaly.folder import folder_splits, group_folder_entries, split_lengths  # noqa: E402
from models.anomaly.postprocess import render_segmentation  # noqa: E402


def anomalib_random_split(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """anomalib.data.utils.split.random_split for one label group, written out from its source:
    floor(n * r) per subset, remainder round-robin from subset 0, randperm cut in order."""
    ratios = [1 - ratio, ratio]
    lengths = [math.floor(n * r) for r in ratios]
    for i in range(n - sum(lengths)):
        lengths[i % sum(lengths)] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[:lengths[0]], perm[lengths[0]:lengths[0] + lengths[1]]


def _images(n: int, value: int) -> list:
    return [Image.fromarray(np.full((8, 8, 3), (value + i) % 256, np.uint8)) for i in range(n)]


def test_default_split_moves_normals_to_test_then_halves_test_per_label():
    normal, abnormal = _images(11, 0), _images(5, 100)
    masks = [np.eye(8, dtype=bool) for _ in abnormal]
    s = folder_splits(normal, abnormal, abnormal_masks=masks, seed=7)
    kept, moved = anomalib_random_split(11, 0.2, 7)  # 9 train, 2 normals into the test set
    assert s.record["train"]["normal"] == kept and len(kept) == 9 and len(s.train) == 9
    assert s.train == [normal[i] for i in kept]
    # validation from test, label-aware: normals (moved) then abnormal, each split 0.5
    test_n, val_n = anomalib_random_split(len(moved), 0.5, 7)
    test_a, val_a = anomalib_random_split(5, 0.5, 7)
    assert s.record["validation"] == {"normal": [moved[i] for i in val_n], "abnormal": val_a}
    assert s.record["test"] == {"normal": [moved[i] for i in test_n], "abnormal": test_a}
    assert s.record["counts"] == {"train": 9, "validation": {"normal": 1, "abnormal": 2},
                                  "test": {"normal": 1, "abnormal": 3}}
    # images, labels and masks travel together; every input is used exactly once
    for part in (s.validation, s.test):
        for (src, i), im, y, m in zip(part.sources, part.images, part.labels, part.masks):
            assert im is (normal if src == "normal" else abnormal)[i] and y == (src == "abnormal")
            assert (m is None) == (src == "normal")
    used = s.train_sources + s.validation.sources + s.test.sources
    assert sorted(used) == sorted([("normal", i) for i in range(11)] + [("abnormal", i) for i in range(5)])
    assert s.test.has_masks and len(s.validation.as_validation().abnormal_masks) == 2


def test_split_is_seeded_and_normal_test_images_skip_the_train_split():
    normal = _images(20, 0)
    a, b, c = (folder_splits(normal, _images(6, 50), seed=s).record for s in (0, 0, 1))
    assert a == b and a["train"] != c["train"]
    s = folder_splits(normal, _images(6, 50), normal_test=_images(4, 200), seed=0)
    assert s.record["train"]["normal"] == list(range(20))  # nothing moved: the test set has normals
    assert s.record["counts"]["validation"] == {"normal": 2, "abnormal": 3}
    assert {src for src, _ in s.test.sources + s.validation.sources} == {"abnormal", "normal_test"}
    # normal images only: the validation split holds only normals, there are no masks
    s = folder_splits(normal, seed=0)
    assert s.validation.counts()["abnormal"] == 0 and not s.validation.has_masks


def test_split_sizes_and_bad_inputs():
    assert split_lengths(5, [0.5, 0.5]) == [3, 2] and split_lengths(1, [0.8, 0.2]) == [1, 0]
    s = folder_splits(_images(1, 0), _images(1, 9))  # one image per label: nothing divides by zero
    assert len(s.train) == 1 and s.record["counts"]["test"] == {"normal": 0, "abnormal": 1}
    with pytest.raises(ValueError, match="normal"):
        folder_splits([], _images(2, 0))
    with pytest.raises(ValueError, match="abnormal_masks"):
        folder_splits(_images(3, 0), _images(2, 0), abnormal_masks=[None])
    with pytest.raises(ValueError, match="val_split_ratio"):
        folder_splits(_images(3, 0), val_split_ratio=1.0)


def test_zip_layout_groups_folders_and_matches_masks():
    names = ["data/normal/b.png", "data/abnormal/x/2.png", "data/normal/a.png", "data/abnormal/1.png",
             "data/mask/1_mask.png", "data/good/c.jpg"]
    g = group_folder_entries(names)
    assert [names[i] for i in g.normal] == ["data/normal/a.png", "data/normal/b.png", "data/good/c.jpg"]
    assert [names[i] for i in g.abnormal] == ["data/abnormal/1.png", "data/abnormal/x/2.png"]
    assert g.abnormal_masks == [4, None]
    with pytest.raises(ValueError, match="other/z.png"):
        group_folder_entries(["normal/a.png", "other/z.png"])
    with pytest.raises(ValueError, match="no abnormal image"):
        group_folder_entries(["normal/a.png", "mask/q.png"])
    with pytest.raises(ValueError, match="normal/"):
        group_folder_entries(["abnormal/a.png"])


def test_segmentation_overlay_equals_skimage_mark_boundaries():
    segmentation = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 0:12] = True
    mask[30:40, 30:35] = True
    mask[25, 25] = True
    ref = segmentation.mark_boundaries(img, mask, color=(1, 0, 0), mode="thick")
    got = np.asarray(Image.open(io.BytesIO(render_segmentation(Image.fromarray(img), mask))))
    assert np.array_equal(np.rint(ref * 255).astype(np.uint8), got)
    assert (got == (255, 0, 0)).all(axis=2).sum() > 50
