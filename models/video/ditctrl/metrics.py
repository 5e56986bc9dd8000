"""CSCV, DiTCtrl's transition-smoothness metric (the released `metrics/cscv_metric.py`).

Per frame: ADM center crop to 224 (box-halve while the short side >= 448, bicubic resize of
the short side to 224, center crop), CLIP normalisation, CLIP ViT-B/32 `pooler_output`. Then
the cosine similarity of adjacent frames, CV = std / mean x 10 (population std),
CSCV = 1 / (1 + CV): 1 for perfectly even change between frames, lower for jumps.

Deviation: the released script scores the written MP4 (after H.264); `cscv` scores whatever
frames it is given (the pipeline's raw frames, or `decode_mp4` output for the script's number).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224


def center_crop_arr(img: Image.Image, image_size: int = IMAGE_SIZE) -> Image.Image:
    """ADM's center crop, as the released metric uses it."""
    while min(*img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    y, x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[y: y + image_size, x: x + image_size])


def cscv_from_features(features) -> float:
    """CSCV of per-frame feature vectors (F >= 2, D), computed in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"CSCV needs (frames >= 2, dim) features, got shape {f.shape}")
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    sims = np.sum(f[:-1] * f[1:], axis=1)
    cv = np.std(sims) / np.mean(sims) * 10
    return float(1.0 / (1.0 + cv))


class CSCVScorer:
    """CSCV with a CLIP vision tower (ViT-B/32 pretrained; a tiny random one in the tiny profile)."""

    def __init__(self, vision_model, image_size: int = IMAGE_SIZE, batch_size: int = 32):
        self.vision_model = vision_model.eval()
        self.image_size = image_size
        self.batch_size = batch_size

    def preprocess(self, frames) -> torch.Tensor:
        arr = np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"frames have to be (F, H, W, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
        crops = np.stack([np.asarray(center_crop_arr(Image.fromarray(f), self.image_size)) for f in arr])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def features(self, frames) -> np.ndarray:
        p = next(self.vision_model.parameters())
        x = self.preprocess(frames)
        out = [self.vision_model(pixel_values=x[i: i + self.batch_size].to(p.device, p.dtype)).pooler_output.float().cpu()
               for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out).numpy()

    def __call__(self, frames) -> float:
        return cscv_from_features(self.features(frames))


def cscv(frames, scorer: CSCVScorer) -> float:
    """CSCV of (F, H, W, 3) uint8 frames (function form, for benchmarks)."""
    return scorer(frames)
