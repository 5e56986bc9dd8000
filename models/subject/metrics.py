"""DreamBench's three numbers (DreamBooth, Ruiz et al. 2023, sec. 4.1), as SuTI and
BLIP-Diffusion report them:

    CLIP-I  mean cosine similarity of CLIP ViT-B/32 image embeddings, every generated image
            against every real subject photo
    CLIP-T  mean cosine similarity of each generated image's CLIP embedding with its prompt's
    DINO    mean cosine similarity of DINO ViT-S/16 CLS embeddings, generated vs real, all pairs

Embeddings: CLIP's projected image / text features (`visual_projection(pooler_output)`,
`text_projection(pooler_output)`), DINO's last-layer CLS token after the final LayerNorm
(`last_hidden_state[:, 0]`). Preprocessing: CLIP's (bicubic resize of the short side to 224,
center crop 224, CLIP mean/std) and DINO's eval transform (bicubic resize to 256, center crop
224, ImageNet mean/std). For CLIP-T, prompts name the subject by its class ("a dog swimming"),
not by a tuned identifier: `metric_prompt` rewrites them.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

from models.subject.images import as_pil_list, resize_center_crop, to_tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRICS = ("clip_i", "clip_t", "dino")
MAX_METRIC_IMAGES = 64


def _unit(x) -> np.ndarray:
    x = np.asarray(x.detach().cpu().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"embeddings have to be (N >= 1, D), got shape {x.shape}")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mean_pairwise_cosine(generated, reference) -> float:
    """Mean over all (generated, reference) pairs of their cosine similarity, in float64."""
    g, r = _unit(generated), _unit(reference)
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"embedding widths differ: {g.shape[1]} vs {r.shape[1]}")
    return float((g @ r.T).mean())


def clip_i(generated_embeds, subject_embeds) -> float:
    return mean_pairwise_cosine(generated_embeds, subject_embeds)


def dino(generated_cls, subject_cls) -> float:
    return mean_pairwise_cosine(generated_cls, subject_cls)


def clip_t(image_embeds, text_embeds) -> float:
    """Mean of cos(image_i, text_i); one text embedding is shared by every image."""
    i, t = _unit(image_embeds), _unit(text_embeds)
    if t.shape[0] == 1:
        t = np.repeat(t, i.shape[0], axis=0)
    if t.shape != i.shape:
        raise ValueError(f"one text per image (or one for all): {t.shape[0]} texts for {i.shape[0]} images")
    return float(np.sum(i * t, axis=1).mean())


def metric_prompt(prompt: str, identifier: str | None, subject_class: str) -> str:
    """"a sks dog in the snow" -> "a dog in the snow" (the identifier is dropped, the class kept)."""
    if identifier:
        prompt = re.sub(rf"\b{re.escape(identifier)}\s+(?={re.escape(subject_class)}\b)", "", prompt)
        prompt = re.sub(rf"\b{re.escape(identifier)}\b", subject_class, prompt)
    return " ".join(prompt.split())


class DreamBenchScorer:
    """CLIP-I / CLIP-T / DINO over PIL images. `clip` a transformers CLIPModel (ViT-B/32 when
    pretrained), `clip_tokenizer` its tokenizer, `dino` a ViTModel (dino-vits16)."""

    def __init__(self, clip, clip_tokenizer, dino, batch_size: int = 16):
        self.clip, self.clip_tokenizer, self.dino = clip.eval(), clip_tokenizer, dino.eval()
        self.clip_size = clip.config.vision_config.image_size
        self.dino_size = dino.config.image_size
        self.batch_size = batch_size

    def to(self, device=None, dtype=None) -> "DreamBenchScorer":
        self.clip.to(device=device, dtype=dtype)
        self.dino.to(device=device, dtype=dtype)
        return self

    def clip_pixels(self, images) -> torch.Tensor:
        s = self.clip_size
        return to_tensor([resize_center_crop(im, s, s, Image.BICUBIC) for im in images], CLIP_MEAN, CLIP_STD)

    def dino_pixels(self, images) -> torch.Tensor:
        s = self.dino_size
        return to_tensor([resize_center_crop(im, round(s * 256 / 224), s, Image.BICUBIC) for im in images],
                         IMAGENET_MEAN, IMAGENET_STD)

    def _batched(self, model, x: torch.Tensor, fn) -> torch.Tensor:
        p = next(model.parameters())
        return torch.cat([fn(x[i: i + self.batch_size].to(p.device, p.dtype)).float().cpu()
                          for i in range(0, x.shape[0], self.batch_size)])

    @torch.no_grad()
    def clip_image_embeds(self, images) -> torch.Tensor:
        m = self.clip
        return self._batched(m, self.clip_pixels(images),
                             lambda x: m.visual_projection(m.vision_model(pixel_values=x).pooler_output))

    @torch.no_grad()
    def clip_text_embeds(self, texts: list[str]) -> torch.Tensor:
        m = self.clip
        tok = self.clip_tokenizer(list(texts), padding="max_length", truncation=True,
                                  max_length=m.config.text_config.max_position_embeddings, return_tensors="pt")
        dev = next(m.parameters()).device
        out = m.text_model(input_ids=tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev)).pooler_output
        return m.text_projection(out).float().cpu()

    @torch.no_grad()
    def dino_embeds(self, images) -> torch.Tensor:
        m = self.dino
        return self._batched(m, self.dino_pixels(images), lambda x: m(pixel_values=x).last_hidden_state[:, 0])

    def score(self, generated, subject_images, prompt: str | None = None, metrics=METRICS) -> dict:
        """{metric: float} for the requested metrics; CLIP-T needs `prompt` (class-named)."""
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"`metrics`: unknown {unknown}; use any of {', '.join(METRICS)}")
        gen = as_pil_list(generated, "generated", MAX_METRIC_IMAGES)
        if "clip_t" in metrics and not prompt:
            raise ValueError("`prompt` is needed for clip_t")
        out = {}
        gen_clip = self.clip_image_embeds(gen) if {"clip_i", "clip_t"} & set(metrics) else None
        if "clip_i" in metrics or "dino" in metrics:
            ref = as_pil_list(subject_images, "subject_images", MAX_METRIC_IMAGES)
            if "clip_i" in metrics:
                out["clip_i"] = clip_i(gen_clip, self.clip_image_embeds(ref))
            if "dino" in metrics:
                out["dino"] = dino(self.dino_embeds(gen), self.dino_embeds(ref))
        if "clip_t" in metrics:
            out["clip_t"] = clip_t(gen_clip, self.clip_text_embeds([prompt]))
        return out
