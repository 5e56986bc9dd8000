"""Subject photos in, model tensors out: checks and the crops every subject method shares."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MAX_SUBJECT_IMAGES = 8  # the 1-8 photos; the API may set a stricter limit


def as_pil_list(images, name: str = "subject_images", max_images: int = MAX_SUBJECT_IMAGES) -> list[Image.Image]:
    """One image or a list of 1..max_images images (PIL, or uint8 HxWx3 arrays) -> RGB PIL list."""
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"`{name}` has to be a PIL image or a non-empty list of them")
    if len(images) > max_images:
        raise ValueError(f"`{name}` holds {len(images)} images; at most {max_images} are allowed")
    out = []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
                raise ValueError(f"`{name}[{i}]`: an array has to be uint8 (H, W, 3), got {im.dtype} {im.shape}")
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise ValueError(f"`{name}[{i}]` has to be a PIL image or a uint8 array, got {type(im).__name__}")
        if min(im.size) < 1:
            raise ValueError(f"`{name}[{i}]` is empty ({im.size[0]}x{im.size[1]})")
        out.append(im.convert("RGB"))
    return out


def resize_center_crop(image: Image.Image, short_side: int, crop: int, resample=Image.BICUBIC) -> Image.Image:
    """torchvision's Resize(short_side) + CenterCrop(crop) (the eval transform of CLIP, DINO
    and the LAVIS BLIP-Diffusion processor), in PIL."""
    w, h = image.size
    scale = short_side / min(w, h)
    rw, rh = max(crop, round(w * scale)), max(crop, round(h * scale))
    image = image.resize((rw, rh), resample)
    left, top = int(round((rw - crop) / 2.0)), int(round((rh - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def to_tensor(images: list[Image.Image], mean, std) -> torch.Tensor:
    """RGB PIL images of one size -> float32 (N, 3, H, W), (x / 255 - mean) / std."""
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images])).permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def to_training_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """DreamBooth's instance transform with center crop: Resize(size) + CenterCrop(size),
    scaled to [-1, 1]. float32 (3, size, size)."""
    return to_tensor([resize_center_crop(image, size, size, Image.BILINEAR)], [0.5] * 3, [0.5] * 3)[0]
