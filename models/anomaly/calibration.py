"""Thresholds and normalisation statistics from validation predictions, shared by the
anomaly models: any model with ``predict_images_raw`` (see scoring.AnomalyScorer) and a config
with ``threshold_quantile``, ``image_size`` and ``seed``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .common import Progress, mask_to_array
from .postprocess import NormalizationStats, Thresholds, f1_optimal_threshold, quantile_threshold

if TYPE_CHECKING:  # pragma: no cover
    from .scoring import AnomalyScorer

__all__ = ["calibrate"]


def calibrate(model: "AnomalyScorer", normal: Sequence, abnormal: Sequence,
              abnormal_masks: Sequence | None, progress: Progress | None) -> None:
    """Set thresholds and normalisation stats from validation predictions.

    * image threshold: F1-optimal when both normal and abnormal images are given, else the
      ``threshold_quantile`` quantile of the normal image scores;
    * pixel threshold: F1-optimal over all validation pixels when masks for the abnormal
      images are given (normal images count as all-normal pixels), else the
      ``threshold_quantile`` quantile of the per-image maxima of the normal images' maps (so
      that about that share of normal images gets an empty mask). anomalib falls back to the
      image threshold here; for PatchCore the map maximum is smaller than the image score
      (it is blurred), so that would make masks too small.
    * min/max: over all validation image scores and all validation map pixels (anomalib).
    """
    cfg = model.config
    q = float(cfg.threshold_quantile)
    all_images = list(normal) + list(abnormal)
    total = len(all_images)
    done = [0]

    def sub(stage, d, t):
        if progress is not None:
            progress("calibration", min(done[0] + d, total), total)

    n_scores, n_maps = model.predict_images_raw(normal, progress=sub)
    done[0] = len(normal)
    a_scores, a_maps = model.predict_images_raw(abnormal, progress=sub)
    scores = np.concatenate([n_scores, a_scores])
    maps = np.concatenate([n_maps, a_maps])

    if len(normal) and len(abnormal):
        labels = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
        image_thr, _ = f1_optimal_threshold(scores, labels)
        image_method = "f1"
    elif len(normal):
        image_thr, image_method = quantile_threshold(n_scores, q), "quantile"
    else:
        raise ValueError("calibration needs normal images")

    masks_given = abnormal_masks is not None and len(abnormal) and any(m is not None for m in abnormal_masks)
    pixel_method = "quantile"
    if masks_given:
        if len(abnormal_masks) != len(abnormal):
            raise ValueError("abnormal_masks must align with abnormal images")
        s = cfg.image_size
        gt = [np.zeros((s, s), bool)] * len(normal) + [
            mask_to_array(m, s) if m is not None else None for m in abnormal_masks]
        keep = [i for i, m in enumerate(gt) if m is not None]
        pix_scores = maps[keep].reshape(-1)
        pix_labels = np.stack([gt[i] for i in keep]).reshape(-1)
        # bounded cost: at most 4M pixels (seeded subsample) for the precision-recall sweep
        limit = 1 << 22
        if pix_scores.size > limit:
            sel = np.random.default_rng(cfg.seed).choice(pix_scores.size, limit, replace=False)
            pix_scores, pix_labels = pix_scores[sel], pix_labels[sel]
        if pix_labels.any() and not pix_labels.all():
            pixel_thr, _ = f1_optimal_threshold(pix_scores, pix_labels)
            pixel_method = "f1"
    if pixel_method == "quantile":
        ref = n_maps if len(normal) else maps
        pixel_thr = quantile_threshold(ref.reshape(len(ref), -1).max(axis=1), q)

    model.thresholds = Thresholds(float(image_thr), float(pixel_thr), image_method, pixel_method,
                                  q if "quantile" in (image_method, pixel_method) else None)
    model.stats = NormalizationStats(float(scores.min()), float(scores.max()),
                                     float(maps.min()), float(maps.max()))
    model.info["calibration"] = {"normal": len(normal), "abnormal": len(abnormal),
                                 "masks": bool(masks_given)}

