"""The distillation loss and the anomaly map: cosine distances between the teacher's and the
student's feature maps, scale by scale.

Loss (paper eq. 1-2): per scale k, ``M^k(h, w) = 1 - cos(f_E^k(h, w), f_D^k(h, w))`` over the
channel vector at each location, averaged over the locations (and the batch). Deviations:
the scales are averaged, as the issue states (the paper and anomalib sum them: a constant
factor of 3 that Adam's update all but ignores); ``mode="flattened"`` is the official RD4AD
code and anomalib (``loss.py``): one cosine per image between the whole flattened maps,
summed over the scales.

Anomaly map (paper eq. 3): the per-scale ``M^k`` maps, each upsampled bilinearly
(``align_corners=True``, as anomalib) to the input size, combined by ``mode``: ``"add"``
(the paper's sum, RD4AD's evaluation and anomalib's ``ReverseDistillation`` default) or
``"multiply"`` (the default of anomalib's bare ``AnomalyMapGenerator``), then Gaussian-blurred
(sigma 4, anomalib's kernel size ``2 * int(4 sigma + 0.5) + 1``, reflect padding). The image
score is the map's maximum (paper; anomalib's post-processor).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..common import gaussian_blur

__all__ = ["LOSS_MODES", "MAP_MODES", "anomaly_map", "distillation_loss"]

LOSS_MODES = ("per_location", "flattened")
MAP_MODES = ("add", "multiply")


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                      mode: str = "per_location") -> torch.Tensor:
    """Scalar loss over matching lists of (B, C_k, H_k, W_k) maps; see the module docstring."""
    if len(teacher) != len(student) or not teacher:
        raise ValueError("teacher and student need the same, non-zero number of feature maps")
    if mode == "per_location":
        per_scale = [(1.0 - F.cosine_similarity(t, s, dim=1)).mean() for t, s in zip(teacher, student)]
        return torch.stack(per_scale).mean()
    if mode == "flattened":
        loss = teacher[0].new_zeros(())
        for t, s in zip(teacher, student):
            loss = loss + (1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
        return loss
    raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")


def anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int],
                mode: str = "add", sigma: float = 4.0) -> torch.Tensor:
    """(B, H, W) anomaly maps at ``size`` from the per-scale cosine distances."""
    if mode not in MAP_MODES:
        raise ValueError(f"anomaly_map_mode must be one of {MAP_MODES}, got {mode!r}")
    b = teacher[0].shape[0]
    out = (torch.ones if mode == "multiply" else torch.zeros)((b, 1, *size), device=teacher[0].device)
    for t, s in zip(teacher, student):
        d = (1.0 - F.cosine_similarity(t, s, dim=1)).unsqueeze(1)
        d = F.interpolate(d, size=size, mode="bilinear", align_corners=True)
        out = out * d if mode == "multiply" else out + d
    return gaussian_blur(out, sigma)[:, 0]
