"""Scoring shared by the anomaly models: thresholds, normalisation, per-image results (maps,
masks, boxes at each image's own size) and the rendered result files.

A model class mixes in :class:`AnomalyScorer` and provides ``config`` (with ``image_size``,
``batch_size``, ``min_box_area``), ``thresholds``, ``stats`` and
``predict_raw(batch) -> (scores (B,), maps (B, S, S))`` at the network input size.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .common import Progress, ScoreItem, images_to_tensor
from .postprocess import Thresholds, boxes_from_mask, normalize

__all__ = ["AnomalyScorer"]


class AnomalyScorer:
    """Mixin: everything after the raw prediction."""

    # -- thresholds -------------------------------------------------------------------
    def set_thresholds(self, image: float | None = None, pixel: float | None = None) -> Thresholds:
        """Change the raw-unit thresholds without refitting (normalisation stats stay)."""
        t = self.thresholds
        if image is not None:
            if not math.isfinite(float(image)):
                raise ValueError("image threshold must be finite")
            t.image, t.image_method = float(image), "manual"
        if pixel is not None:
            if not math.isfinite(float(pixel)):
                raise ValueError("pixel threshold must be finite")
            t.pixel, t.pixel_method = float(pixel), "manual"
        return t

    def normalize_score(self, score):
        return normalize(score, self.thresholds.image, self.stats.image_min, self.stats.image_max)

    def normalize_map(self, anomaly_map):
        return normalize(anomaly_map, self.thresholds.pixel, self.stats.pixel_min, self.stats.pixel_max)

    # -- raw inference ----------------------------------------------------------------
    def predict_images_raw(self, images: Sequence, batch_size: int | None = None,
                           progress: Progress | None = None, stage: str = "scoring"):
        """Raw scores (N,) and network-resolution maps (N, S, S) as numpy, in batches."""
        images = list(images)
        bs = int(batch_size or self.config.batch_size)
        scores, maps = [], []
        for start in range(0, len(images), bs):
            batch, _ = images_to_tensor(images[start:start + bs], self.config.image_size)
            s, m = self.predict_raw(batch)
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
            if progress is not None:
                progress(stage, min(start + bs, len(images)), len(images))
        if not scores:
            s = self.config.image_size
            return np.zeros((0,), np.float32), np.zeros((0, s, s), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    # -- public scoring ---------------------------------------------------------------
    def score(self, images: Sequence, batch_size: int | None = None,
              progress: Progress | None = None) -> list[ScoreItem]:
        """Score images in batches (on the model's device). Maps, masks and boxes are at each
        image's own size; ``progress("scoring", done, total)`` is called after each batch."""
        import cv2

        images = list(images)
        bs = int(batch_size or self.config.batch_size)
        items: list[ScoreItem] = []
        for start in range(0, len(images), bs):
            chunk = images[start:start + bs]
            batch, sizes = images_to_tensor(chunk, self.config.image_size)
            scores, maps = self.predict_raw(batch)
            scores_np = scores.float().cpu().numpy()
            maps_np = maps.float().cpu().numpy()
            for score, amap, (w, h) in zip(scores_np, maps_np, sizes):
                if (w, h) != amap.shape[::-1]:
                    amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
                nmap = self.normalize_map(amap).astype(np.float32)
                nscore = float(self.normalize_score(float(score)))
                mask = nmap > 0.5
                boxes = boxes_from_mask(mask, nmap, self.config.min_box_area)
                items.append(ScoreItem(float(score), nscore, nscore > 0.5, boxes,
                                       amap.astype(np.float32), nmap, mask))
            if progress is not None:
                progress("scoring", min(start + bs, len(images)), len(images))
        return items

    def __call__(self, images: Sequence, batch_size: int | None = None,
                 progress: Progress | None = None) -> list[ScoreItem]:
        return self.score(images, batch_size, progress)

    def render(self, image, item: ScoreItem, alpha: float = 0.4, segmentation: bool = False) -> dict[str, bytes]:
        """The result files of one scored image: ``heat_map.png`` (JET over the image,
        alpha 0.4), ``mask.png`` (8-bit, 255 = anomalous) and ``anomaly_map.png`` (16-bit
        normalised map, see :func:`postprocess.anomaly_map_png16_bytes` for its scaling); with
        ``segmentation=True`` also ``segmentation.png`` (the mask's boundaries in red over the
        image, as anomalib's visualiser draws its "Segmentation Result")."""
        from .postprocess import anomaly_map_png16_bytes, mask_png_bytes, render_heat_map, render_segmentation

        files = {
            "heat_map.png": render_heat_map(image, item.normalized_map, alpha),
            "mask.png": mask_png_bytes(item.mask),
            "anomaly_map.png": anomaly_map_png16_bytes(item.normalized_map, thresholds=self.thresholds,
                                                       stats=self.stats),
        }
        if segmentation:
            files["segmentation.png"] = render_segmentation(image, item.mask)
        return files
