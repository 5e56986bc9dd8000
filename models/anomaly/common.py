"""Shared by the anomaly models (PatchCore, Reverse Distillation): the progress callback
type, validation sets, per-image results, device choice, image -> tensor conversion, masks
and the Gaussian blur of anomaly maps."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .postprocess import Box

__all__ = [
    "Progress",
    "ScoreItem",
    "Validation",
    "as_rgb_pil",
    "gaussian_blur",
    "images_to_tensor",
    "images_to_uint8",
    "mask_to_array",
    "resolve_device",
]

#: ``progress(stage, done, total)``; PatchCore's stages: "embedding", "coreset", "calibration",
#: "scoring". Called at least once per batch; an exception raised by it (e.g. a cancellation)
#: propagates.
Progress = Callable[[str, int, int], None]


@dataclass
class Validation:
    """Images for thresholds and normalisation statistics.

    ``normal`` and ``abnormal`` images; ``abnormal_masks`` (optional, aligned with
    ``abnormal``; PIL images or HxW arrays, nonzero = defect) enable the F1-optimal pixel
    threshold.
    """

    normal: Sequence = ()
    abnormal: Sequence = ()
    abnormal_masks: Sequence | None = None


@dataclass
class ScoreItem:
    """Result for one image. Maps are at the scored image's own size (H, W)."""

    score: float  # raw image score
    normalized_score: float  # in [0, 1]; the image threshold maps to 0.5
    label: bool  # normalized_score > 0.5
    boxes: list[Box]  # connected components of the mask
    anomaly_map: np.ndarray = field(repr=False)  # float32 raw distances
    normalized_map: np.ndarray = field(repr=False)  # float32 in [0, 1]
    mask: np.ndarray = field(repr=False)  # bool, normalized_map > 0.5

    def to_dict(self) -> dict:
        """JSON-friendly summary (no arrays)."""
        return {
            "score": float(self.score),
            "normalized_score": float(self.normalized_score),
            "label": bool(self.label),
            "boxes": [b.to_dict() for b in self.boxes],
        }


# ---------------------------------------------------------------------- image handling


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def as_rgb_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError("array images must be uint8")
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(arr[..., :3].copy(), "RGB")
    raise TypeError(f"not an image: array of shape {arr.shape}")


def images_to_uint8(images: Sequence, size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """PIL images (or uint8 arrays) -> (B, 3, size, size) uint8 and their original (W, H).

    Resizing is PIL bilinear (antialiased when shrinking, like torchvision's
    ``Resize(antialias=True)`` that anomalib uses); non-square images are stretched, as
    anomalib's square ``image_size`` does.
    """
    from PIL import Image

    arrays, sizes = [], []
    for im in images:
        pil = as_rgb_pil(im)
        sizes.append(pil.size)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        arrays.append(np.asarray(pil, dtype=np.uint8))
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), sizes
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), sizes


def images_to_tensor(images: Sequence, size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """PIL images (or uint8 arrays) -> (B, 3, size, size) float in [0, 1] and their (W, H);
    see :func:`images_to_uint8`."""
    batch, sizes = images_to_uint8(images, size)
    return batch.float().div_(255.0), sizes


def mask_to_array(mask, size: int) -> np.ndarray:
    from PIL import Image

    if isinstance(mask, Image.Image):
        m = mask.convert("L")
    else:
        m = Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255, "L")
    if m.size != (size, size):
        m = m.resize((size, size), Image.NEAREST)
    return np.asarray(m) > 127


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, 1, H, W), anomalib's ``GaussianBlur2d``: kernel size
    ``2 * int(4 sigma + 0.5) + 1``, normalised kernel, reflect padding, "same" output.
    Applied separably (identical result to the 2-D kernel, which is an outer product)."""
    if sigma <= 0:
        return maps
    k = 2 * int(4.0 * sigma + 0.5) + 1
    half = k // 2
    x = torch.arange(k, dtype=torch.float32, device=maps.device) - half
    kern = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    kern = kern / kern.sum()
    h, w = maps.shape[-2:]
    mode = "reflect" if half < min(h, w) else "replicate"
    out = F.pad(maps, (half, half, half, half), mode=mode)
    out = F.conv2d(out, kern.view(1, 1, 1, k))
    out = F.conv2d(out, kern.view(1, 1, k, 1))
    return out

