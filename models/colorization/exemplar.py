"""Exemplar conditioning: one extra cross-attention token from a colour reference image.

The official design (`FrozenCLIPDualEmbedder` in ldm/modules/encoders/modules.py): CLIP
ViT-B/32's vision tower (`CLIPVisionModel`, openai/clip-vit-base-patch32) on the exemplar,
its `pooler_output` (the post-layernorm CLS token, 768 wide) concatenated after the 77 CLIP
ViT-L/14 text tokens (768 wide): 78 tokens. There is no projection in the official code: the
two widths are equal. The tiny profile keeps that (its vision tower is as wide as its text
tower); a width mismatch is refused at construction.

Preprocessing is CLIPImageProcessor's for ViT-B/32 (RGB, shorter side to the model's image
size with bicubic, centre crop, /255, CLIP mean/std), written out here so it does not change
with the transformers version or its torchvision-dependent backend choice.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_exemplar(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> (1, 3, size, size) float32 normalised pixel values."""
    img = image.convert("RGB")
    w, h = img.size
    # transformers' get_resize_output_image_size: the short side to `size`, the long side
    # int(size * long / short)
    nw, nh = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


@torch.no_grad()
def encode_exemplar(image_encoder, image: Image.Image) -> torch.Tensor:
    """(1, 1, D) exemplar token: the vision tower's pooler_output."""
    size = image_encoder.config.image_size
    pixels = preprocess_exemplar(image, size).to(device=image_encoder.device, dtype=image_encoder.dtype)
    return image_encoder(pixel_values=pixels).pooler_output[:, None, :]
