"""Thresholds, normalisation, masks, boxes, metrics and rendering for anomaly maps.

Pure numpy (+ OpenCV / Pillow imported where used); no torch, so it is cheap to import.

Conventions (following anomalib's one-class post-processor):

* Raw scores are PatchCore distances (image score: reweighted max patch distance; map:
  blurred patch distances). Larger = more anomalous.
* Thresholds are in raw units, one for image scores and one for anomaly maps.
* Normalisation: ``clamp((x - threshold) / (max - min) + 0.5, 0, 1)`` with ``min``/``max``
  collected on the validation (or held-out normal) predictions, separately for image scores
  and map pixels (as anomalib >= 1.0 does). The threshold maps to exactly 0.5.
* ``label = normalised score > 0.5``; ``mask = normalised map > 0.5``; boxes are the
  8-connected components of the mask with at least ``min_area`` pixels.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "Box",
    "NormalizationStats",
    "Thresholds",
    "anomaly_map_npy_bytes",
    "anomaly_map_png16_bytes",
    "auroc",
    "boxes_from_mask",
    "decode_anomaly_map_png16",
    "f1_optimal_threshold",
    "mask_png_bytes",
    "normalize",
    "quantile_threshold",
    "render_heat_map",
    "render_segmentation",
]

# Normalised value 0.5 <=> raw value == threshold; a mask pixel is anomalous above it.
NORMALIZED_THRESHOLD = 0.5
PNG16_MAX = 65535


# ------------------------------------------------------------------------------ metrics


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    ``labels`` truthy = anomalous. Returns ``nan`` when one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError("scores and labels differ in size")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts, dtype=np.float64)
    avg_rank = cum - (counts - 1) / 2.0  # 1-based average rank of each tie group
    rank_sum = avg_rank[inverse][y].sum()
    u = rank_sum - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def f1_optimal_threshold(scores, labels) -> tuple[float, float]:
    """Threshold maximising F1 for the rule ``anomalous = score > threshold``.

    Like anomalib's ``F1AdaptiveThreshold`` (precision-recall curve, argmax F1), except that
    the returned threshold lies halfway between the lowest score predicted anomalous and the
    next lower distinct score (anomalib returns that score itself and uses ``>=``); with the
    strict ``>`` used for labels and masks this keeps the F1-optimal split and a margin on
    both sides. Returns ``(threshold, f1)``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.size == 0:
        raise ValueError("no scores")
    positives = int(y.sum())
    if positives == 0 or positives == y.size:
        raise ValueError("F1-optimal threshold needs both normal and anomalous samples")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # candidate cut after the last element of each group of equal scores
    last_of_group = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    idx = np.nonzero(last_of_group)[0]
    tp_c = tp[idx].astype(np.float64)
    fp_c = fp[idx].astype(np.float64)
    precision = tp_c / (tp_c + fp_c)
    recall = tp_c / positives
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    i = idx[best]
    lowest_positive = s_sorted[i]
    if i + 1 < s_sorted.size:
        threshold = (lowest_positive + s_sorted[i + 1]) / 2.0
    else:  # everything predicted anomalous
        threshold = float(np.nextafter(lowest_positive, -np.inf))
    return float(threshold), float(f1[best])


def quantile_threshold(normal_scores, q: float) -> float:
    """The ``q`` quantile (linear interpolation) of held-out normal scores."""
    s = np.asarray(normal_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("no normal scores to take a quantile of")
    if not 0.0 < q <= 1.0:
        raise ValueError("quantile must be in (0, 1]")
    return float(np.quantile(s, q))


# ------------------------------------------------------------------------ normalisation


@dataclass
class Thresholds:
    """Raw-unit thresholds and how they were obtained.

    ``image_method`` / ``pixel_method``: ``"f1"`` (F1-optimal on a validation set with
    anomalous images / masks), ``"quantile"`` (``quantile`` of held-out normal image scores,
    or of the per-image maxima of held-out normal anomaly maps), ``"manual"`` (set later).
    """

    image: float
    pixel: float
    image_method: str = "quantile"
    pixel_method: str = "quantile"
    quantile: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Thresholds":
        return cls(**{k: d[k] for k in ("image", "pixel", "image_method", "pixel_method", "quantile") if k in d})


@dataclass
class NormalizationStats:
    """min/max of validation predictions: image scores and anomaly-map pixels."""

    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NormalizationStats":
        return cls(**{k: float(d[k]) for k in ("image_min", "image_max", "pixel_min", "pixel_max")})


def _span(vmin: float, vmax: float, threshold: float) -> float:
    # Deviation from anomalib (which divides by max - min unguarded): a degenerate range
    # (e.g. a single held-out image) falls back to |threshold| (or 1e-6), so nothing divides
    # by zero and the threshold still maps to 0.5.
    span = float(vmax) - float(vmin)
    if not math.isfinite(span) or span <= 1e-12:
        span = max(abs(float(threshold)), 1e-6)
    return span


def normalize(x, threshold: float, vmin: float, vmax: float):
    """anomalib's min-max normalisation: ``clamp((x - thr) / (max - min) + 0.5, 0, 1)``."""
    span = _span(vmin, vmax, threshold)
    out = (np.asarray(x, dtype=np.float32) - np.float32(threshold)) / np.float32(span) + np.float32(0.5)
    out = np.clip(out, 0.0, 1.0)
    return float(out) if np.ndim(out) == 0 else out


# ------------------------------------------------------------------------------- boxes


@dataclass
class Box:
    """One connected component of the mask: top-left ``x, y``, size ``w, h`` (pixels of the
    scored image), ``area`` (mask pixels in the component) and ``score`` (max normalised map
    value inside it)."""

    x: int
    y: int
    w: int
    h: int
    area: int
    score: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


def boxes_from_mask(mask: np.ndarray, normalized_map: np.ndarray | None = None,
                    min_area: int = 16) -> list[Box]:
    """8-connected components of ``mask`` with at least ``min_area`` pixels, largest first."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError("mask must be 2-D")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    boxes: list[Box] = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < max(1, int(min_area)):
            continue
        score = 1.0
        if normalized_map is not None:
            window = normalized_map[y:y + h, x:x + w]
            score = float(window[labels[y:y + h, x:x + w] == i].max())
        boxes.append(Box(x, y, w, h, area, score))
    boxes.sort(key=lambda b: (-b.area, b.y, b.x))
    return boxes


# --------------------------------------------------------------------------- rendering


def _png_bytes(img, pnginfo=None) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()


def _resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``size`` = (width, height)."""
    import cv2

    if (m.shape[1], m.shape[0]) == tuple(size):
        return m
    return cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)


def render_heat_map(image, normalized_map: np.ndarray, alpha: float = 0.4) -> bytes:
    """JET colour map of the normalised map blended over the image, as PNG bytes.

    ``out = alpha * jet(map) + (1 - alpha) * image`` (anomalib's ``superimpose_anomaly_map``
    with alpha 0.4; blue = 0, the threshold 0.5 = green, red = 1). ``image`` is a PIL image
    or an HxWx3 uint8 RGB array; the map is resized to it if needed.
    """
    import cv2
    from PIL import Image

    rgb = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    m = _resize_map(np.asarray(normalized_map, dtype=np.float32), (rgb.shape[1], rgb.shape[0]))
    u8 = np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8)
    jet = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = np.clip(np.rint(alpha * jet.astype(np.float32) + (1.0 - alpha) * rgb.astype(np.float32)), 0, 255)
    return _png_bytes(Image.fromarray(out.astype(np.uint8), "RGB"))


def render_segmentation(image, mask: np.ndarray) -> bytes:
    """The mask's boundaries drawn in red over the image, as PNG bytes: anomalib's
    "Segmentation Result" (``skimage.segmentation.mark_boundaries(image, mask, color=(1, 0, 0),
    mode="thick")``): a pixel is a boundary where the dilation and erosion of the mask by the
    3x3 cross (connectivity 1) differ, i.e. on both sides of the edge. The mask is resized
    (nearest) to the image."""
    import cv2
    from PIL import Image

    rgb = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    m = np.asarray(mask, dtype=np.uint8)
    if m.shape != rgb.shape[:2]:
        m = cv2.resize(m, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    edge = (cv2.dilate(m, cross, borderType=cv2.BORDER_REPLICATE)
            != cv2.erode(m, cross, borderType=cv2.BORDER_REPLICATE))
    out = rgb[..., :3].copy()
    out[edge] = (255, 0, 0)
    return _png_bytes(Image.fromarray(out, "RGB"))


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """Binary mask as an 8-bit greyscale PNG: 255 = anomalous, 0 = normal."""
    from PIL import Image

    return _png_bytes(Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), "L"))


def anomaly_map_png16_bytes(normalized_map: np.ndarray, *, thresholds: Thresholds | None = None,
                            stats: NormalizationStats | None = None) -> bytes:
    """The normalised anomaly map as a 16-bit greyscale PNG.

    Scaling: ``pixel = round(normalised * 65535)``, so ``normalised = pixel / 65535`` (to
    within half a step, 7.6e-6) and the pixel threshold (0.5) sits at 32767.5: values >= 32768
    are the mask (up to that rounding; ``mask.png`` carries the exact mask).
    Raw distances inside the normalisation window are ``(pixel / 65535 - 0.5) * (pixel_max -
    pixel_min) + pixel_threshold``; those figures travel in the PNG's text chunks
    (``visionjobs:pixel_threshold``, ``visionjobs:pixel_min``, ``visionjobs:pixel_max``)
    when given. Values outside the window are clamped (use :func:`anomaly_map_npy_bytes` for
    the unclamped raw map).
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    m = np.clip(np.asarray(normalized_map, dtype=np.float64), 0.0, 1.0)
    u16 = np.rint(m * PNG16_MAX).astype(np.uint16)
    info = PngInfo()
    info.add_text("visionjobs:scaling", "normalized = value / 65535; threshold 0.5")
    if thresholds is not None:
        info.add_text("visionjobs:pixel_threshold", repr(float(thresholds.pixel)))
    if stats is not None:
        info.add_text("visionjobs:pixel_min", repr(float(stats.pixel_min)))
        info.add_text("visionjobs:pixel_max", repr(float(stats.pixel_max)))
    return _png_bytes(Image.fromarray(u16), pnginfo=info)


def decode_anomaly_map_png16(data: bytes) -> np.ndarray:
    """Inverse of :func:`anomaly_map_png16_bytes`: the normalised map as float32 in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img)
    return (arr.astype(np.float64) / PNG16_MAX).astype(np.float32)


def anomaly_map_npy_bytes(anomaly_map: np.ndarray) -> bytes:
    """The raw (unnormalised) anomaly map as a float32 ``.npy`` file (``numpy.load``)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(anomaly_map, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
