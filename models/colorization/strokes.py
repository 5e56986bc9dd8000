"""Colour strokes -> Control Color's mask and masked-hint image.

Two sources, combinable in one request:
- vector strokes (`stroke_spec`): rendered straight at the working size, exactly: a working
  pixel is under a stroke when its centre lies within the (scaled) brush radius of the
  stroke's polyline, which gives round caps, round joins, and a disc for a single point;
- a raster stroke image (RGBA, alpha > 0 marks stroke pixels), processed as the official demo
  processes its painted canvas: mask at the canvas resolution, a 3x3 morphological opening,
  then resized with the image to the working size and binarised.

Outputs follow the original conventions: mask 1 = no stroke (generate), 0 = stroke; hint =
the L image (3 channels) with the stroke colours painted in; masked hint = hint in [-1, 1]
times (mask < 0.5), i.e. the stroke colours and 0 elsewhere. The pipeline VAE-encodes the
masked hint and downsamples the mask to latent size with nearest.

As in the official code, the ControlNet keeps getting the plain L image; the painted hint
only enters through the masked-image latent (and the hint returned here serves previews).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from models.colorization.lab import resize
from models.colorization.stroke_spec import parse_color, validate_strokes

__all__ = [
    "StrokeHint",
    "build_stroke_hint",
    "parse_color",
    "raster_strokes",
    "render_vector_strokes",
    "validate_strokes",
]

# The smallest brush radius in working pixels: sqrt(2)/2 reaches the nearest pixel centre from
# any point of the plane, so a thin stroke or a dot never vanishes when the image is shrunk.
MIN_RADIUS = math.sqrt(2.0) / 2.0 + 1e-6
_CHUNK = 1 << 22  # candidate (pixel, segment) pairs evaluated per numpy batch: bounds memory


@dataclass
class StrokeHint:
    """Stroke conditioning at the working size."""

    hint: np.ndarray  # h x w x 3 uint8: L image with the stroke colours painted in
    stroke: np.ndarray  # h x w bool: True under a stroke

    @property
    def mask(self) -> np.ndarray:
        """h x w float32, the original convention: 1 = no stroke (generate), 0 = stroke."""
        return (~self.stroke).astype(np.float32)

    @property
    def masked_hint(self) -> np.ndarray:
        """h x w x 3 float32 in [-1, 1]: hint / 127.5 - 1 times (mask < 0.5) -- the stroke
        colours under strokes, exactly 0 elsewhere (`prepare_mask_and_masked_image`)."""
        x = self.hint.astype(np.float32) / 127.5 - 1.0
        return x * (self.mask < 0.5)[..., None]

    def to_tensors(self):
        """(mask (1, 1, h, w), masked_hint (1, 3, h, w)) float32 tensors for the pipeline."""
        import torch

        mask = torch.from_numpy(self.mask)[None, None]
        masked = torch.from_numpy(np.ascontiguousarray(self.masked_hint.transpose(2, 0, 1)))[None]
        return mask, masked


def _stroke_coverage(points: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """Pixels (h x w bool) whose centre (i + 0.5, j + 0.5) lies within `radius` of the polyline
    through `points` (K x 2, x/y in working pixels). One point: a disc. Exact, vectorised over
    (pixel, segment) candidate pairs from each segment's bounding box."""
    out = np.zeros((height, width), dtype=bool)
    a = points[:-1] if len(points) > 1 else points
    b = points[1:] if len(points) > 1 else points
    lo = np.minimum(a, b) - radius - 0.5
    hi = np.maximum(a, b) + radius - 0.5
    x0 = np.clip(np.ceil(lo[:, 0]), 0, width).astype(np.int64)
    y0 = np.clip(np.ceil(lo[:, 1]), 0, height).astype(np.int64)
    x1 = np.clip(np.floor(hi[:, 0]) + 1, 0, width).astype(np.int64)
    y1 = np.clip(np.floor(hi[:, 1]) + 1, 0, height).astype(np.int64)
    bw, bh = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
    counts = bw * bh
    r2 = radius * radius
    start = 0
    while start < len(a):
        # a run of segments whose candidates fit one chunk (at least one segment)
        csum = np.cumsum(counts[start:])
        stop = start + max(1, int(np.searchsorted(csum, _CHUNK, side="right")))
        seg = np.arange(start, stop)
        n = counts[seg]
        total = int(n.sum())
        if total:
            idx = np.repeat(seg, n)
            local = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
            px = x0[idx] + local % bw[idx]
            py = y0[idx] + local // bw[idx]
            cx, cy = px + 0.5, py + 0.5
            ax, ay = a[idx, 0], a[idx, 1]
            dx, dy = b[idx, 0] - ax, b[idx, 1] - ay
            len2 = dx * dx + dy * dy
            t = np.where(len2 > 0, ((cx - ax) * dx + (cy - ay) * dy) / np.where(len2 > 0, len2, 1.0), 0.0)
            t = np.clip(t, 0.0, 1.0)
            ex, ey = cx - (ax + t * dx), cy - (ay + t * dy)
            hit = ex * ex + ey * ey <= r2
            out[py[hit], px[hit]] = True
        start = stop
    return out


def render_vector_strokes(strokes, input_size: tuple[int, int], working_size: tuple[int, int]):
    """Render vector strokes given in input-image coordinates at the working size.

    Returns (colors h x w x 3 uint8, stroke h x w bool). Coordinates scale by working / input
    per axis; the brush width by the geometric mean of the two scales (the sides are rounded to
    multiples of 64 separately, so the scales differ by a few percent at most). Later strokes
    paint over earlier ones. Points outside the image are clipped by the raster, not refused
    (the API validates with `validate_strokes`)."""
    (W, H), (w, h) = input_size, working_size
    sx, sy = w / W, h / H
    colors = np.zeros((h, w, 3), np.uint8)
    stroke = np.zeros((h, w), bool)
    for s in strokes:
        rgb = parse_color(s["color"])
        pts = np.asarray(s["points"], dtype=np.float64).reshape(-1, 2) * np.array([sx, sy])
        radius = max(float(s.get("width", 8.0)) * math.sqrt(sx * sy) / 2.0, MIN_RADIUS)
        cover = _stroke_coverage(pts, radius, h, w)
        colors[cover] = rgb
        stroke |= cover
    return colors, stroke


def raster_strokes(stroke_image: Image.Image, l_original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A painted RGBA canvas over the input -> (hint h x w x 3 uint8, mask h x w uint8 with the
    official 255 = no stroke / 0 = stroke), both at the input's resolution.

    As the official `get_mask`: the mask is cleaned with `cv2.morphologyEx(mask, MORPH_OPEN,
    3x3 rect)` on the 255 = no-stroke image. On the stroke set that is a closing: pinholes and
    1-2 px gaps inside strokes become stroke; strokes never shrink. Pixels it adds take the mean
    colour of their painted 3x3 neighbours (the official canvas holds paint there; an RGBA
    canvas holds nothing under alpha 0). A canvas of another size is resized to the input's
    with nearest (a named deviation: the official canvas is the input itself)."""
    H, W = l_original.shape
    if stroke_image.size != (W, H):
        stroke_image = stroke_image.resize((W, H), Image.NEAREST)
    rgba = np.asarray(stroke_image.convert("RGBA"))
    painted = rgba[..., 3] > 0
    mask = np.where(painted, 0, 255).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3)))
    stroke = mask == 0
    colors = rgba[..., :3].copy()
    added = stroke & ~painted
    if added.any():
        weight = painted.astype(np.float32)
        total = cv2.boxFilter(colors.astype(np.float32) * weight[..., None], -1, (3, 3), normalize=False,
                              borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(weight, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        fill = np.rint(total[added] / np.maximum(count[added], 1.0)[:, None])
        colors[added] = np.clip(fill, 0, 255).astype(np.uint8)
    hint = np.repeat(l_original[:, :, None], 3, axis=2)
    hint[stroke] = colors[stroke]
    return hint, mask


def build_stroke_hint(prepared, strokes=None, stroke_image: Image.Image | None = None) -> StrokeHint | None:
    """Stroke conditioning for a `lab.PreparedInput`, or None when there are no strokes (no
    vector strokes and no stroke image). Raster strokes first, vector strokes painted over."""
    strokes = list(strokes or [])
    if not strokes and stroke_image is None:
        return None
    w, h = prepared.working_size
    hint = np.repeat(prepared.l_working[:, :, None], 3, axis=2)
    stroke = np.zeros((h, w), bool)
    if stroke_image is not None:
        hint_o, mask_o = raster_strokes(stroke_image, prepared.l_original)
        # the official order: resize (Lanczos up / area down) the mask and the hint like the
        # image, then binarise the mask at 0.5 (`prepare_mask_and_masked_image`)
        mask_w = resize(mask_o, (w, h), prepared.upscale).astype(np.float32) / 255.0
        stroke = mask_w < 0.5
        hint = resize(hint_o, (w, h), prepared.upscale)
    if strokes:
        colors, vec = render_vector_strokes(strokes, prepared.original_size, (w, h))
        hint[vec] = colors[vec]
        stroke |= vec
    return StrokeHint(hint=hint, stroke=stroke)
