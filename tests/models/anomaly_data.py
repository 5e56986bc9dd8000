"""Synthetic anomaly-detection benchmark built from scikit-image's photographs.

A *category* is one real texture photograph (``skimage.data.brick()``, ``grass()``,
``gravel()``; 512 x 512 greyscale, given a fixed colour tint so they look like a coloured
surface). Normal images are crops of it: training crops from the top part, test crops from
the disjoint bottom part (so a test image is never a training image). Anomalous images are
test-region crops with one synthesised defect and its ground-truth mask:

* ``scratch``: a thin antialiased polyline (1-3 px at 128 px), brighter or darker than the
  surface, with a faint shadow;
* ``stain``: an irregular soft-edged blob tinted brown / yellow / dark, partly transparent;
* ``foreign``: a textured patch cut from another photograph (coffee, astronaut, chelsea,
  rocket) pasted with an irregular outline;
* ``hole``: an irregular near-black region with a shaded rim.

Everything is seeded: the same arguments give the same images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

DEFECT_TYPES = ("scratch", "stain", "foreign", "hole")
TEXTURES = ("brick", "grass", "gravel")
_TINTS = {"brick": (1.0, 0.78, 0.62), "grass": (0.72, 1.0, 0.62), "gravel": (0.92, 0.9, 0.85)}
_FOREIGN_SOURCES = ("coffee", "astronaut", "chelsea", "rocket")


@dataclass
class Sample:
    image: Image.Image
    mask: np.ndarray  # bool (H, W); all False for normal images
    defect: str | None  # None = normal

    @property
    def label(self) -> int:
        return int(self.defect is not None)


@dataclass
class Benchmark:
    category: str
    crop: int
    train: list[Image.Image]
    validation: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)


@lru_cache(maxsize=None)
def texture(name: str) -> np.ndarray:
    """The tinted RGB texture photograph (uint8, 512 x 512 x 3)."""
    import skimage.data

    grey = getattr(skimage.data, name)().astype(np.float32)
    tint = np.asarray(_TINTS.get(name, (1.0, 1.0, 1.0)), np.float32)
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


@lru_cache(maxsize=None)
def _foreign_source(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


def _crop(tex: np.ndarray, size: int, rows: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    y0, y1 = rows
    y = int(rng.integers(y0, max(y0, y1 - size) + 1))
    x = int(rng.integers(0, tex.shape[1] - size + 1))
    return tex[y:y + size, x:x + size].copy()


def _blob(size: int, radius: float, rng: np.random.Generator, center=None, lobes: int = 5) -> np.ndarray:
    """Irregular filled blob (bool mask): a polygon with a randomly perturbed radius."""
    if center is None:
        margin = radius * 1.3 + 2
        center = rng.uniform(margin, size - margin, 2)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(angles)
    for k in range(1, lobes + 1):
        r += rng.uniform(-0.25, 0.25) / k * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.45, 1.6)
    pts = np.stack([center[0] + r * np.cos(angles), center[1] + r * np.sin(angles)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    length = rng.uniform(0.35, 0.65) * s
    angle = rng.uniform(0, np.pi)
    start = rng.uniform(0.2 * s, 0.8 * s, 2)
    n = 5
    pts = [start]
    for _ in range(n - 1):
        angle += rng.normal(0, 0.25)
        pts.append(pts[-1] + length / (n - 1) * np.array([np.cos(angle), np.sin(angle)]))
    pts = np.clip(np.array(pts), 2, s - 3)
    thickness = max(1, int(round(rng.uniform(1.0, 3.0) * s / 128)))
    line = np.zeros((s, s), np.float32)
    cv2.polylines(line, [np.round(pts * 16).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA, shift=4)
    shadow = np.zeros((s, s), np.float32)
    cv2.polylines(shadow, [np.round((pts + 1.5) * 16).astype(np.int32)], False, 1.0, thickness + 1, cv2.LINE_AA, shift=4)
    bright = rng.random() < 0.6
    colour = np.array([235, 235, 230] if bright else [25, 22, 20], np.float32)
    out = img.astype(np.float32)
    out = out * (1 - 0.35 * shadow[..., None])  # faint shadow next to the groove
    alpha = 0.9 * line[..., None]
    out = out * (1 - alpha) + colour * alpha
    return np.clip(out, 0, 255).astype(np.uint8), line > 0.25


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    mask = _blob(s, rng.uniform(0.09, 0.16) * s, rng, lobes=6)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(1.0, s / 100))
    colour = np.array([(110, 70, 30), (200, 170, 60), (45, 40, 35), (150, 40, 30)][rng.integers(4)], np.float32)
    alpha = rng.uniform(0.55, 0.8) * soft[..., None]
    out = img.astype(np.float32) * (1 - alpha) + colour * alpha
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _foreign(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    src = _foreign_source(_FOREIGN_SOURCES[rng.integers(len(_FOREIGN_SOURCES))])
    side = int(rng.uniform(0.2, 0.32) * s)
    for _ in range(20):  # prefer a textured window: a flat one reads as a stain, not an object
        y = int(rng.integers(0, src.shape[0] - side))
        x = int(rng.integers(0, src.shape[1] - side))
        patch = src[y:y + side, x:x + side]
        if patch.std() >= 30:
            break
    mask_local = _blob(side, side * 0.42, rng, center=(side / 2, side / 2), lobes=4)
    py, px = (int(v) for v in rng.integers(2, s - side - 2, 2))
    out = img.copy()
    region = out[py:py + side, px:px + side]
    region[mask_local] = patch[mask_local]
    mask = np.zeros((s, s), bool)
    mask[py:py + side, px:px + side] = mask_local
    return out, mask


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[0]
    mask = _blob(s, rng.uniform(0.06, 0.11) * s, rng, lobes=5)
    rim = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8), iterations=max(1, s // 128)) > 0
    out = img.astype(np.float32)
    out[rim & ~mask] *= 0.55  # shaded rim
    depth = rng.uniform(8, 30)
    noise = rng.normal(0, 4, (s, s, 1)).astype(np.float32)
    out[mask] = np.clip(depth + noise[mask], 0, 255)
    return np.clip(out, 0, 255).astype(np.uint8), mask | rim


_DEFECTS = {"scratch": _scratch, "stain": _stain, "foreign": _foreign, "hole": _hole}


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``img`` with one ``kind`` defect, and its bool mask."""
    return _DEFECTS[kind](img, rng)


def make_benchmark(category: str = "brick", *, crop: int = 128, n_train: int = 16,
                   n_validation: int = 0, n_test_normal: int = 12, n_test_per_defect: int = 6,
                   defects: tuple[str, ...] = DEFECT_TYPES, seed: int = 0) -> Benchmark:
    """Build a benchmark for one texture category.

    Training crops come from rows [0, 288) of the 512-px photograph, validation and test
    crops from rows [288, 512) (``crop`` <= 224). Validation samples (``n_validation`` normal
    and ``n_validation`` anomalous, defect types cycling) and test samples use separate
    random streams.
    """
    if crop > 224:
        raise ValueError("crop must be <= 224 (the test region is 224 rows high)")
    tex = texture(category)
    train_rows, test_rows = (0, 288), (288, 512)
    cat_id = TEXTURES.index(category) if category in TEXTURES else 99
    rng = np.random.default_rng([seed, cat_id, 0])
    train = [Image.fromarray(_crop(tex, crop, train_rows, rng)) for _ in range(n_train)]

    def samples(n_normal: int, per_defect: dict[str, int], stream: int) -> list[Sample]:
        r = np.random.default_rng([seed, cat_id, stream])
        out = []
        for _ in range(n_normal):
            out.append(Sample(Image.fromarray(_crop(tex, crop, test_rows, r)), np.zeros((crop, crop), bool), None))
        for kind, n in per_defect.items():
            for _ in range(n):
                img, mask = add_defect(_crop(tex, crop, test_rows, r), kind, r)
                out.append(Sample(Image.fromarray(img), mask, kind))
        return out

    val_per = {k: 0 for k in defects}
    for i in range(n_validation):
        val_per[defects[i % len(defects)]] += 1
    validation = samples(n_validation, val_per, 1) if n_validation else []
    test = samples(n_test_normal, {k: n_test_per_defect for k in defects}, 2)
    return Benchmark(category, crop, train, validation, test)


def paste_defect(image: Image.Image, box: tuple[int, int, int, int], seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """Paste a foreign photograph patch into ``box`` = (x, y, w, h); returns image and mask."""
    x, y, w, h = box
    src = _foreign_source("chelsea")
    rng = np.random.default_rng(seed)
    sy = int(rng.integers(0, src.shape[0] - h))
    sx = int(rng.integers(0, src.shape[1] - w))
    arr = np.asarray(image.convert("RGB")).copy()
    arr[y:y + h, x:x + w] = src[sy:sy + h, sx:sx + w]
    mask = np.zeros(arr.shape[:2], bool)
    mask[y:y + h, x:x + w] = True
    return Image.fromarray(arr), mask
