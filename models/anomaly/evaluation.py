"""Held-out metrics of a fitted anomaly model (any :class:`scoring.AnomalyScorer`): image
AUROC, F1 of the labels at the model's image threshold (anomalib's test ``F1Score`` with the
adaptive threshold found on validation) and, when every abnormal image has a mask, pixel
AUROC at the network resolution (masks resized nearest, as anomalib resizes them)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .common import Progress, mask_to_array
from .postprocess import auroc

__all__ = ["MAX_PIXELS", "evaluate", "f1_at"]

MAX_PIXELS = 1 << 22  # pixel AUROC over at most 4M pixels (seeded subsample beyond)


def f1_at(scores, labels, threshold: float) -> float | None:
    """F1 of ``score > threshold`` against ``labels``; None without anomalous labels."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if not y.any():
        return None
    pred = s > threshold
    tp = int((pred & y).sum())
    return 2.0 * tp / (int(pred.sum()) + int(y.sum()))


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def evaluate(model, images: Sequence, labels: Sequence[int], masks: Sequence | None = None, *,
             progress: Progress | None = None, stage: str = "testing", seed: int = 0) -> dict:
    """``{"images", "normal", "abnormal", "image_auroc", "image_f1", "pixel_auroc"}``; a metric
    that does not apply (one class only, no masks) is None. ``masks``: per image None (normal)
    or the defect mask; pixel AUROC needs one for every abnormal image."""
    images, labels = list(images), [int(y) for y in labels]
    out = {"images": len(images), "normal": labels.count(0), "abnormal": labels.count(1),
           "image_auroc": None, "image_f1": None, "pixel_auroc": None}
    if not images:
        return out
    scores, maps = model.predict_images_raw(images, progress=progress, stage=stage)
    if out["normal"] and out["abnormal"]:
        out["image_auroc"] = _finite(auroc(scores, labels))
    out["image_f1"] = f1_at(scores, labels, model.thresholds.image)
    if masks is not None and out["abnormal"] and all(m is not None for m, y in zip(masks, labels) if y == 1):
        s = maps.shape[-1]
        gt = np.stack([mask_to_array(m, s) if y == 1 else np.zeros((s, s), bool) for m, y in zip(masks, labels)])
        pix_scores, pix_labels = maps.reshape(-1), gt.reshape(-1)
        if pix_scores.size > MAX_PIXELS:
            sel = np.random.default_rng(seed).choice(pix_scores.size, MAX_PIXELS, replace=False)
            pix_scores, pix_labels = pix_scores[sel], pix_labels[sel]
        if pix_labels.any() and not pix_labels.all():
            out["pixel_auroc"] = _finite(auroc(pix_scores, pix_labels))
    return out
