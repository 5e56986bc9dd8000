"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022),
following anomalib's implementation (``anomalib.models.image.patchcore``).

Fit: the backbone's ``layer2`` and ``layer3`` maps of every training image are 3x3
average-pooled (stride 1, padding 1), ``layer3`` is bilinearly upsampled to ``layer2``'s grid
and both are concatenated per patch. The memory bank is a greedy k-center coreset of all
training patches (``coreset_ratio`` of them), selected on a sparse random projection
(Johnson-Lindenstrauss, eps 0.9) and stored as the original vectors.

Score: per patch the Euclidean distance to its nearest memory-bank vector; per image the
paper's reweighted maximum ``s = (1 - softmax(||m_test* - N_b(m*)||)[0]) * s*`` with
``num_neighbors`` support samples; the anomaly map is the patch-distance grid upsampled
bilinearly to the network input size and blurred with a Gaussian of sigma 4, then resized to
the scored image's own size.

Deviations from anomalib (each also commented where it happens):

* anomalib upsamples the patch scores with ``F.interpolate``'s default (nearest); here
  bilinear, as the issue specifies.
* The greedy k-center selection counts its random starting point as the first centre (the
  paper's Algorithm 1); anomalib uses it only to initialise distances. Both return exactly
  ``int(N * coreset_ratio)`` indices (at least 1 here).
* When the JL dimension for eps 0.9 is not smaller than the feature dimension (small
  backbones, e.g. ``tiny``: 96 dims), no projection is made: a "reduction" that adds
  dimensions only costs time (sklearn refuses that case; anomalib projects up).
* The sparse projection matrix is drawn entry-wise (Bernoulli(density) x Rademacher) from a
  seeded generator instead of row-wise sampling without replacement; same distribution.
* Distances for the k-center loop use ``|x|^2 - 2 x.c + |c|^2`` (a mat-vec, no N x d
  temporary) and are compared squared; the argmax is the same.
* Thresholds and normalisation statistics are computed on a validation set or, without one,
  on held-out training images (``holdout_fraction``), which are then not in the memory bank;
  see :func:`fit_patchcore`. Without anomalous images the image threshold is the
  ``threshold_quantile`` (0.99) quantile of the normal scores (anomalib's F1 threshold
  degenerates there); without defect masks the pixel threshold is that quantile of the
  per-image maxima of the normal maps (anomalib falls back to the image threshold).
* The F1-optimal threshold is the midpoint between the lowest score called anomalous and
  the next lower score, to suit the strict ``> 0.5`` rule (postprocess.f1_optimal_threshold).
* Maps, masks and boxes are returned at each scored image's own size (anomalib returns them
  at the network input size); the blur is applied at the network input size, as anomalib.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import ARCHITECTURES, ResNet, build_backbone, weights_fingerprint
from .calibration import calibrate
from .common import (  # noqa: F401  (re-exported: the names lived here before the split)
    Progress,
    ScoreItem,
    Validation,
    gaussian_blur,
    images_to_tensor,
    resolve_device,
)
from .coreset import (  # noqa: F401  (re-exported)
    SparseRandomProjection,
    jl_min_dim,
    k_center_greedy,
    select_coreset,
)
from .postprocess import NormalizationStats, Thresholds
from .scoring import AnomalyScorer

__all__ = [
    "PatchCoreConfig",
    "PatchCoreModel",
    "Progress",
    "ScoreItem",
    "SparseRandomProjection",
    "Validation",
    "fit_patchcore",
    "gaussian_blur",
    "jl_min_dim",
    "k_center_greedy",
    "nearest_neighbors",
    "reweighted_image_score",
    "select_coreset",
]

LAYERS = ("layer2", "layer3")


# ------------------------------------------------------------------------------- config


@dataclass
class PatchCoreConfig:
    """Everything that defines a fitted model (stored in the artifact's JSON)."""

    backbone: str = "wide_resnet50_2"  # resnet18 | resnet34 | resnet50 | wide_resnet50_2 | tiny
    backbone_width: int | None = None  # base width override (tiny: 16)
    image_size: int = 256  # images are resized to image_size x image_size
    coreset_ratio: float = 0.1
    num_neighbors: int = 9
    projection_eps: float = 0.9
    blur_sigma: float = 4.0
    #: without anomalous validation images: threshold = this quantile of held-out normal
    #: image scores (and of the per-image maxima of their anomaly maps)
    threshold_quantile: float = 0.99
    #: share of training images held out for thresholds when no normal validation images
    #: are given (at least one image when there are two or more)
    holdout_fraction: float = 0.2
    min_box_area: int = 16  # pixels of the scored image
    batch_size: int = 8
    seed: int = 0

    def validate(self) -> "PatchCoreConfig":
        if self.backbone not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {self.backbone!r}")
        if not 32 <= int(self.image_size) <= 2048:
            raise ValueError("image_size must be between 32 and 2048")
        if not 0.0 < float(self.coreset_ratio) <= 1.0:
            raise ValueError("coreset_ratio must be in (0, 1]")
        if int(self.num_neighbors) < 1:
            raise ValueError("num_neighbors must be >= 1")
        if not 0.0 < float(self.projection_eps) < 1.5:
            raise ValueError("projection_eps must be in (0, 1.5)")
        if float(self.blur_sigma) < 0:
            raise ValueError("blur_sigma must be >= 0")
        if not 0.0 < float(self.threshold_quantile) <= 1.0:
            raise ValueError("threshold_quantile must be in (0, 1]")
        if not 0.0 <= float(self.holdout_fraction) < 1.0:
            raise ValueError("holdout_fraction must be in [0, 1)")
        if int(self.batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        if int(self.min_box_area) < 1:
            raise ValueError("min_box_area must be >= 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "PatchCoreConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------- features


def generate_embedding(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """3x3 average pool per layer, layer3 upsampled (bilinear) to layer2's grid, concatenated.

    Returns (B, C2 + C3, h, w).
    """
    pooled = [F.avg_pool2d(features[name], kernel_size=3, stride=1, padding=1) for name in LAYERS]
    base = pooled[0]
    parts = [base]
    for f in pooled[1:]:
        parts.append(F.interpolate(f, size=base.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------- scoring


def _chunk_rows(n_cols: int, max_elems: int) -> int:
    return max(1, max_elems // max(1, n_cols))


def nearest_neighbors(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
                      max_elems: int = 1 << 24, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k nearest bank rows for each query row, chunked over both queries and bank
    so that no more than ``max_elems`` distances exist at once. Returns (distances,
    indices), each (Q, k), sorted ascending (k=1: shape (Q,)).

    ``exact=True`` computes distances without the matrix-multiplication shortcut (slower,
    no cancellation error; used for the few support-sample queries of the reweighting).
    """
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    m = bank.shape[0]
    k = int(min(k, m))
    bank_chunk = min(m, max(k, 1 << 16))
    q_chunk = _chunk_rows(bank_chunk, max_elems)
    out_d, out_i = [], []
    for qs in range(0, queries.shape[0], q_chunk):
        q = queries[qs:qs + q_chunk]
        best_d = best_i = None
        for bs in range(0, m, bank_chunk):
            dist = torch.cdist(q, bank[bs:bs + bank_chunk], compute_mode=mode)
            if k == 1:
                d, i = dist.min(dim=1, keepdim=True)
            else:
                d, i = dist.topk(min(k, dist.shape[1]), dim=1, largest=False)
            i = i + bs
            if best_d is None:
                best_d, best_i = d, i
            else:
                cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                best_d, pos = cat_d.topk(k, dim=1, largest=False)
                best_i = cat_i.gather(1, pos)
        out_d.append(best_d)
        out_i.append(best_i)
    dists, idxs = torch.cat(out_d), torch.cat(out_i)
    if k == 1:
        return dists[:, 0], idxs[:, 0]
    return dists, idxs


def reweighted_image_score(patch_scores: torch.Tensor, locations: torch.Tensor,
                           embedding: torch.Tensor, bank: torch.Tensor,
                           num_neighbors: int) -> torch.Tensor:
    """The paper's image score (eq. 7), as anomalib's ``compute_anomaly_score``.

    ``patch_scores``/``locations``: (B, P) nearest-neighbour distance and bank index per
    patch; ``embedding``: (B, P, C). For each image, m_test* = the patch with the largest
    distance s*, m* = its nearest bank vector, N_b(m*) = the ``num_neighbors`` bank vectors
    nearest to m* (m* itself first); ``w = 1 - softmax(||m_test* - N_b(m*)||)[0]``,
    score ``= w * s*``. With ``num_neighbors == 1`` the score is s*.
    """
    b = patch_scores.shape[0]
    if num_neighbors == 1:
        return patch_scores.amax(dim=1)
    rows = torch.arange(b, device=patch_scores.device)
    max_patch = patch_scores.argmax(dim=1)
    s_star = patch_scores[rows, max_patch]
    m_test = embedding[rows, max_patch]  # (B, C)
    m_star = bank[locations[rows, max_patch]]  # (B, C)
    _, support = nearest_neighbors(m_star, bank, k=min(num_neighbors, bank.shape[0]), exact=True)
    if support.ndim == 1:
        support = support[:, None]
    dist = torch.linalg.vector_norm(m_test[:, None, :] - bank[support], dim=-1)  # (B, nb)
    weights = 1.0 - torch.softmax(dist, dim=1)[:, 0]
    return weights * s_star


# ------------------------------------------------------------------------------ model


class PatchCoreModel(AnomalyScorer):
    """A fitted PatchCore model: backbone + memory bank + thresholds + normalisation stats.
    Thresholds, scoring and rendering come from :class:`scoring.AnomalyScorer`."""

    def __init__(self, config: PatchCoreConfig, backbone: ResNet, memory_bank: torch.Tensor,
                 thresholds: Thresholds, stats: NormalizationStats, info: dict | None = None) -> None:
        self.config = config
        self.backbone = backbone.eval()
        self.memory_bank = memory_bank.to(next(backbone.parameters()).device).float().contiguous()
        self.thresholds = thresholds
        self.stats = stats
        self.info = dict(info or {})

    # -- device -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.memory_bank.device

    def to(self, device: str | torch.device) -> "PatchCoreModel":
        self.backbone.to(device)
        self.memory_bank = self.memory_bank.to(device)
        return self

    def nbytes(self, include_backbone: bool = True) -> int:
        """Device memory held by the model (memory bank, plus backbone weights), for caches."""
        n = self.memory_bank.numel() * self.memory_bank.element_size()
        if include_backbone:
            n += sum(t.numel() * t.element_size() for t in self.backbone.state_dict().values())
        return int(n)

    # -- raw inference ----------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> patch embedding (B, C, h, w)."""
        feats = self.backbone.extract(batch.to(self.device, non_blocking=True))
        return generate_embedding(feats)

    @torch.inference_mode()
    def predict_raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> raw image scores (B,) and anomaly maps (B, S, S) at input size."""
        emb = self.embed(batch)
        b, c, h, w = emb.shape
        flat = emb.permute(0, 2, 3, 1).reshape(-1, c)
        dist, loc = nearest_neighbors(flat, self.memory_bank, k=1)
        patch_scores = dist.view(b, h * w)
        scores = reweighted_image_score(patch_scores, loc.view(b, h * w), flat.view(b, h * w, c),
                                        self.memory_bank, self.config.num_neighbors)
        maps = patch_scores.view(b, 1, h, w)
        # deviation: anomalib upsamples with the default (nearest) mode; bilinear per the issue
        maps = F.interpolate(maps, size=tuple(batch.shape[-2:]), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps, self.config.blur_sigma)
        return scores, maps[:, 0]


# -------------------------------------------------------------------------------- fit


def _embed_all(model: PatchCoreModel, images: Sequence, batch_size: int,
               progress: Progress | None) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        batch, _ = images_to_tensor(images[start:start + batch_size], model.config.image_size)
        emb = model.embed(batch)
        out.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]))
        if progress is not None:
            progress("embedding", min(start + batch_size, len(images)), len(images))
    return torch.cat(out)


def fit_patchcore(images: Sequence, config: PatchCoreConfig | None = None,
                  validation: Validation | None = None, *,
                  backbone: ResNet | None = None,
                  weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                  device: str | torch.device | None = None,
                  progress: Progress | None = None) -> PatchCoreModel:
    """Fit PatchCore on normal ``images`` (PIL images or uint8 arrays, any size).

    ``backbone``: an already built :class:`ResNet` (e.g. from a warm cache) matching
    ``config.backbone``; otherwise one is built from ``weights`` (file or state_dict; ``None``
    = seeded random weights, the ``tiny`` profile). ``validation``: see :func:`calibration.calibrate`.
    Without normal validation images, ``holdout_fraction`` of the training images (seeded
    choice, at least one) are held out of the memory bank and used as the normal
    validation images; with a single training image its own (in-bank) scores are used.
    ``progress(stage, done, total)`` is called per batch and per 2 % of the coreset loop;
    exceptions it raises propagate (cancellation).

    Memory: all training patch embeddings are held on ``device`` during the coreset
    selection, ``n_images * (image_size / 8)^2 * C * 4`` bytes (C = 1536 for
    wide_resnet50_2: 6.3 MB per 256-px image; 96 for tiny); nothing is quadratic in them.
    """
    cfg = (config or PatchCoreConfig()).validate()
    images = list(images)
    if not images:
        raise ValueError("empty training set: fit_patchcore needs at least one normal image")
    dev = resolve_device(device)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, width=cfg.backbone_width, weights=weights,
                                  seed=cfg.seed, device=dev)
    else:
        expected_width = cfg.backbone_width or ARCHITECTURES[cfg.backbone].width
        if backbone.arch != cfg.backbone or backbone.base_width != expected_width:
            raise ValueError(f"backbone {backbone.arch}/{backbone.base_width} does not match config "
                             f"{cfg.backbone}/{expected_width}")
        backbone.eval().requires_grad_(False).to(dev)
    fingerprint = weights_fingerprint(backbone)

    validation = validation or Validation()
    normal_val = list(validation.normal)
    abnormal_val = list(validation.abnormal)
    train = images
    held_out: list = []
    if not normal_val:
        if len(images) >= 2:
            n_hold = min(len(images) - 1, max(1, int(round(len(images) * cfg.holdout_fraction))))
            perm = np.random.default_rng(cfg.seed).permutation(len(images))
            hold = set(perm[:n_hold].tolist())
            held_out = [im for i, im in enumerate(images) if i in hold]
            train = [im for i, im in enumerate(images) if i not in hold]
            normal_val = held_out
        else:
            normal_val = list(images)  # single image: calibrate on itself (in the bank)

    model = PatchCoreModel(cfg, backbone, torch.zeros(1, 1, device=dev),
                           Thresholds(0.0, 0.0), NormalizationStats(0.0, 1.0, 0.0, 1.0))
    embedding = _embed_all(model, train, cfg.batch_size, progress)
    idx = select_coreset(embedding, cfg.coreset_ratio, cfg.projection_eps, cfg.seed, progress)
    model.memory_bank = embedding[idx].contiguous()
    del embedding
    grid = _grid(cfg.image_size)
    model.info = {
        "backbone_fingerprint": fingerprint,
        "backbone_weights": backbone.weights_source,
        "layers": list(LAYERS),
        "embedding_dim": int(model.memory_bank.shape[1]),
        "feature_grid": [grid, grid],
        "counts": {"train_images": len(train), "held_out_images": len(held_out),
                   "patches": len(train) * grid * grid,
                   "memory_bank": int(model.memory_bank.shape[0])},
    }
    calibrate(model, normal_val, abnormal_val, validation.abnormal_masks, progress)
    return model


def _grid(image_size: int) -> int:
    """Side of layer2's grid for a square input (stride 8 through conv1/maxpool/layer2)."""
    s = image_size
    s = (s + 2 * 3 - 7) // 2 + 1  # conv1
    s = (s + 2 * 1 - 3) // 2 + 1  # maxpool
    s = (s + 2 * 1 - 3) // 2 + 1  # layer2 stride-2 conv
    return s
