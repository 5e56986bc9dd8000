"""Lab colour helpers and the Control Color pre/post-processing.

Everything here is 8-bit OpenCV Lab (`cv2.COLOR_RGB2LAB` on uint8), as in the official
code: L is scaled to 0..255 (L* x 255/100) and a, b are offset by 128. The model was trained
on hints built this way, so the hint must be built exactly this way too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

LATENT_MULTIPLE = 64  # sides are multiples of 64, as in the official resize_image


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> uint8 HxWx3 OpenCV Lab."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2LAB)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 OpenCV Lab -> uint8 HxWx3 RGB."""
    return cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.uint8), cv2.COLOR_LAB2RGB)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 HxWx3 RGB. Grayscale is replicated to 3 channels (then it goes
    through Lab like any RGB image: the official code skips Lab for inputs its is_gray_scale
    calls gray and uses the gray value as L, which shifts gray levels; `input_l3(..., "official")`
    reproduces that)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def l_channel(image: Image.Image) -> np.ndarray:
    """The 8-bit Lab L channel (HxW uint8) of a PIL image at its own resolution."""
    return rgb_to_lab(to_rgb_array(image))[:, :, 0]


def is_gray_scale_official(rgb: np.ndarray, threshold: float = 10) -> bool:
    """test.py `is_gray_scale(img, threshold=10)`: the mean of the variances of the int16
    channel differences R-G, G-B, B-R is at most `threshold`."""
    c = rgb.astype(np.int16)
    diff = ((c[..., 0] - c[..., 1]).var() + (c[..., 1] - c[..., 2]).var() + (c[..., 2] - c[..., 0]).var()) / 3.0
    return bool(diff <= threshold)


def input_l3(image: Image.Image, gray_input: str = "lab") -> np.ndarray:
    """The official `input_image` after its conversion (test.py `process`), HxWx3 uint8: the Lab L
    channel replicated (`merge([L, L, L])`). gray_input "official": an input its is_gray_scale calls
    gray is kept as it is (its gray values stand in for L, and channel 0 is merged back later)."""
    rgb = to_rgb_array(image)
    if gray_input == "official" and is_gray_scale_official(rgb):
        return rgb.copy()
    if gray_input not in ("lab", "official"):
        raise ValueError(f"gray-input rule has to be 'lab' or 'official', got {gray_input!r}")
    return np.repeat(rgb_to_lab(rgb)[:, :, :1], 3, axis=2)


def _round64(x: float) -> int:
    return max(LATENT_MULTIPLE, int(np.round(x / LATENT_MULTIPLE)) * LATENT_MULTIPLE)


def working_size(width: int, height: int, short_side: int, max_long_side: int, rule: str = "aspect") -> tuple[int, int]:
    """(width, height) the model runs at: shorter side scaled to `short_side`, both sides
    rounded to multiples of 64, aspect ratio kept.

    Named deviation from the official `resize_image` (rule "official" reproduces it, see
    `official_working_size`): it replaces any side that rounds to >= 800 by 768 on its own,
    squeezing wide images. We keep the aspect ratio and instead cap the long side at
    `max_long_side` (rounded down to a multiple of 64), shrinking the short side in proportion."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if rule == "official":
        return official_working_size(width, height, short_side)
    if rule != "aspect":
        raise ValueError(f"working-size rule has to be 'aspect' or 'official', got {rule!r}")
    k = short_side / min(width, height)
    w, h = width * k, height * k
    cap = max(LATENT_MULTIPLE, (max_long_side // LATENT_MULTIPLE) * LATENT_MULTIPLE)
    if max(w, h) > cap:
        shrink = cap / max(w, h)
        w, h = w * shrink, h * shrink
    # the long side may round up past the cap by < 32 px: clamp it
    return min(_round64(w), cap), min(_round64(h), cap)


OFFICIAL_SQUEEZE_FROM = 800  # annotator/util.py resize_image, l. 37-38: `H_new if H_new<800 else ...`
OFFICIAL_SQUEEZE_TO = int(np.round(800 / 64.0)) * 64  # = 768 (np.round(12.5) is 12)


def official_working_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The official annotator/util.py `resize_image` size (l. 28-39): k = short_side / min(H, W); each side
    int(np.round(side * k / 64)) * 64, then a side >= 800 becomes 768 on its own (aspect not
    kept). Only guard added: a side never rounds below 64 (the official would make a 0-px side
    for inputs under 32 px after scaling, and crash)."""
    k = float(short_side) / min(float(height), float(width))
    h = int(np.round(height * k / 64.0)) * 64
    w = int(np.round(width * k / 64.0)) * 64
    h = h if h < OFFICIAL_SQUEEZE_FROM else OFFICIAL_SQUEEZE_TO
    w = w if w < OFFICIAL_SQUEEZE_FROM else OFFICIAL_SQUEEZE_TO
    return max(LATENT_MULTIPLE, w), max(LATENT_MULTIPLE, h)


def resize(array: np.ndarray, size: tuple[int, int], upscale: bool | None = None) -> np.ndarray:
    """Resize to (width, height): Lanczos when upscaling, area when downscaling (the
    official choice: area averaging avoids aliasing when shrinking). `upscale` None decides by
    pixel count; the official rule decides by the short side's scale (k > 1), which differs only
    for sizes it squeezes."""
    h, w = array.shape[:2]
    if (w, h) == tuple(size):
        return array.copy()
    up = size[0] * size[1] > w * h if upscale is None else upscale
    return cv2.resize(array, size, interpolation=cv2.INTER_LANCZOS4 if up else cv2.INTER_AREA)


@dataclass
class PreparedInput:
    """The model-side view of one input image."""

    l_original: np.ndarray  # HxW uint8, L at the original resolution (for replace_l)
    l_working: np.ndarray  # h x w uint8, L at the working size
    hint: np.ndarray  # h x w x 3 float32 in [0, 1]: L replicated to 3 channels / 255
    original_size: tuple[int, int]  # (width, height)
    working_size: tuple[int, int]  # (width, height), multiples of 64
    upscale: bool | None = None  # interpolation rule for inputs resized like the image (None: by pixel count)
    l3_original: np.ndarray | None = None  # HxWx3 uint8, the official `input_image` (what BLIP captions)


def prepare_input(image: Image.Image, short_side: int, max_long_side: int, rule: str = "aspect",
                  gray_input: str = "lab") -> PreparedInput:
    """Lab at the original resolution, then the L image (3 channels) resized to the working
    size: the official order (it resizes `merge([L, L, L])`, not the RGB image). `rule`: the
    working-size rule ("aspect", or "official" with the official interpolation choice);
    `gray_input`: see `input_l3`."""
    l3_orig = input_l3(image, gray_input)
    size = working_size(image.width, image.height, short_side, max_long_side, rule)
    upscale = short_side / min(image.width, image.height) > 1 if rule == "official" else None
    l3 = resize(l3_orig, size, upscale)
    return PreparedInput(
        l_original=l3_orig[:, :, 0].copy(),
        l_working=l3[:, :, 0].copy(),
        hint=l3.astype(np.float32) / 255.0,
        original_size=(image.width, image.height),
        working_size=size,
        upscale=upscale,
        l3_original=l3_orig,
    )


L_TOLERANCE = 1  # 8-bit Lab -> RGB -> Lab moves L by up to 1 even in gamut (rounding)


def replace_l(output_rgb: np.ndarray, original: Image.Image | np.ndarray, gamut_fit: bool = True) -> np.ndarray:
    """Resize a uint8 RGB model output to the original size (Lanczos), convert to Lab,
    put the original-resolution input's L in place of the output's L, back to RGB.

    `original` is the input PIL image or its precomputed L channel (HxW uint8).

    Named deviation (gamut_fit, default on): the official code converts the merged Lab back
    with OpenCV, which clips out-of-gamut colours in RGB and so changes their L (a dark L
    with a saturated a/b cannot be shown). We instead pull those pixels' chroma toward
    neutral just far enough that L survives the round trip, so the output's L is the
    input's (to 8-bit rounding) for any model output. In-gamut pixels are untouched."""
    l_orig = original if isinstance(original, np.ndarray) else l_channel(original)
    h, w = l_orig.shape
    out = output_rgb
    if out.shape[:2] != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LANCZOS4)
    lab = rgb_to_lab(out)
    lab[:, :, 0] = l_orig
    rgb = lab_to_rgb(lab)
    if gamut_fit:
        bad = _l_error(rgb, l_orig) > L_TOLERANCE
        if bad.any():
            rgb[bad] = _fit_chroma(lab[bad])
    return rgb


def _l_error(rgb: np.ndarray, l_target: np.ndarray) -> np.ndarray:
    return np.abs(rgb_to_lab(rgb)[..., 0].astype(np.int16) - l_target.astype(np.int16))


def _fit_chroma(lab: np.ndarray, iterations: int = 7) -> np.ndarray:
    """Lab pixels (K, 3) -> RGB (K, 3) with the largest chroma scale in [0, 1] (bisection)
    whose RGB keeps L within L_TOLERANCE. At a fixed L and hue the sRGB gamut is an
    interval of chroma starting at neutral, so the search is monotone; neutral always fits."""
    l = lab[:, 0].astype(np.float32)
    ab = lab[:, 1:].astype(np.float32) - 128.0
    lo = np.zeros(len(lab), np.float32)
    hi = np.ones(len(lab), np.float32)

    def rgb_at(scale):
        cand = np.concatenate([l[:, None], 128.0 + ab * scale[:, None]], axis=1)
        return lab_to_rgb(np.clip(np.rint(cand), 0, 255).astype(np.uint8)[:, None, :])

    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = _l_error(rgb_at(mid), lab[:, None, 0])[:, 0] <= L_TOLERANCE
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return rgb_at(lo)[:, 0, :]
