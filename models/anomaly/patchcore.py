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

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import ARCHITECTURES, ResNet, build_backbone, weights_fingerprint
from .postprocess import (
    Box,
    NormalizationStats,
    Thresholds,
    boxes_from_mask,
    f1_optimal_threshold,
    normalize,
    quantile_threshold,
)

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

#: ``progress(stage, done, total)``; stages: "embedding", "coreset", "calibration", "scoring".
#: Called at least once per batch; an exception raised by it (e.g. a cancellation) propagates.
Progress = Callable[[str, int, int], None]


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


def _as_rgb_pil(image):
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


def images_to_tensor(images: Sequence, size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """PIL images (or uint8 arrays) -> (B, 3, size, size) float in [0, 1] and their (W, H).

    Resizing is PIL bilinear (antialiased when shrinking, like torchvision's
    ``Resize(antialias=True)`` that anomalib uses); non-square images are stretched, as
    anomalib's square ``image_size`` does.
    """
    from PIL import Image

    arrays, sizes = [], []
    for im in images:
        pil = _as_rgb_pil(im)
        sizes.append(pil.size)
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        arrays.append(np.asarray(pil, dtype=np.uint8))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    return batch, sizes


def _mask_to_array(mask, size: int) -> np.ndarray:
    from PIL import Image

    if isinstance(mask, Image.Image):
        m = mask.convert("L")
    else:
        m = Image.fromarray((np.asarray(mask) != 0).astype(np.uint8) * 255, "L")
    if m.size != (size, size):
        m = m.resize((size, size), Image.NEAREST)
    return np.asarray(m) > 127


# ---------------------------------------------------------------- features and blur


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


# -------------------------------------------------------------------- coreset sampling


def jl_min_dim(n_samples: int, eps: float) -> int:
    """Johnson-Lindenstrauss safe dimension, ``4 ln n / (eps^2/2 - eps^3/3)`` (Dasgupta &
    Gupta eq. 2.1, as sklearn and anomalib compute it)."""
    denominator = eps ** 2 / 2.0 - eps ** 3 / 3.0
    return int(4.0 * math.log(max(int(n_samples), 2)) / denominator)


class SparseRandomProjection:
    """Very sparse random projection (Li, Hastie & Church 2006), density ``1/sqrt(d)``:
    entries ``+-sqrt(1/density)/sqrt(k)`` with probability ``density/2`` each, else 0.
    Stored dense on the features' device (as anomalib does)."""

    def __init__(self, eps: float = 0.9, seed: int = 0) -> None:
        self.eps = float(eps)
        self.seed = int(seed)
        self.matrix: torch.Tensor | None = None  # (d, k)
        self.n_components: int | None = None

    def fit(self, n_samples: int, n_features: int, device: torch.device | str = "cpu") -> "SparseRandomProjection":
        k = jl_min_dim(n_samples, self.eps)
        self.n_components = k
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        density = 1.0 / math.sqrt(n_features)
        nonzero = torch.rand((n_features, k), generator=g) < density
        signs = torch.where(torch.rand((n_features, k), generator=g) < 0.5, -1.0, 1.0)
        scale = math.sqrt(1.0 / density) / math.sqrt(k)
        self.matrix = (nonzero.float() * signs * scale).to(device)
        return self

    def transform(self, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        if self.matrix is None:
            raise RuntimeError("SparseRandomProjection.fit() has not been called")
        return torch.cat([x[i:i + chunk] @ self.matrix for i in range(0, x.shape[0], chunk)])


@contextlib.contextmanager
def _cpu_threads_for_small_steps(features: torch.Tensor):
    """Run the k-center loop single-threaded on the CPU when each step is small.

    Each step is a handful of O(N d) kernels; for N d below ~8M elements, OpenMP's per-kernel
    fork/join costs more than it saves, and on a busy machine it costs 10-15x (measured:
    0.42 ms/step single-threaded vs 6-8 ms with 2 threads for N=20480, d=96). The thread
    count is process-global: it is restored on exit.
    """
    if features.device.type != "cpu" or features.numel() > (1 << 23) or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def k_center_greedy(features: torch.Tensor, n_select: int, seed: int = 0,
                    progress: Progress | None = None) -> torch.Tensor:
    """Greedy k-center: repeatedly add the point farthest from the selected set.

    Memory O(N): one running minimum distance per point, updated by a mat-vec per step (no
    N x N matrix). The random first centre is part of the selection (paper's Algorithm 1;
    deviation: anomalib only uses it to initialise distances). Returns ``n_select`` distinct
    indices (LongTensor on the features' device).
    """
    n = features.shape[0]
    n_select = int(min(max(n_select, 1), n))
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    start = int(torch.randint(n, (1,), generator=g).item())
    feats = features.float()
    sq = (feats * feats).sum(dim=1)
    min_dist = torch.full((n,), float("inf"), device=feats.device)
    d = torch.empty(n, device=feats.device)
    selected = torch.empty(n_select, dtype=torch.long, device=feats.device)
    idx = torch.tensor([start], device=feats.device)
    report_every = max(1, n_select // 50)
    with _cpu_threads_for_small_steps(feats):
        for i in range(n_select):
            selected[i] = idx[0]
            center = feats.index_select(0, idx)[0]  # (d,)
            torch.addmv(sq, feats, center, alpha=-2.0, out=d)  # |x|^2 - 2 x.c
            d.add_(sq.index_select(0, idx)).clamp_min_(0.0)  # + |c|^2
            torch.minimum(min_dist, d, out=min_dist)
            min_dist.index_fill_(0, idx, 0.0)  # exact zero for the chosen point (rounding)
            idx = torch.argmax(min_dist).view(1)  # stays on device: no sync per step
            if progress is not None and ((i + 1) % report_every == 0 or i + 1 == n_select):
                progress("coreset", i + 1, n_select)
    return selected


def select_coreset(embedding: torch.Tensor, ratio: float, eps: float = 0.9, seed: int = 0,
                   progress: Progress | None = None) -> torch.Tensor:
    """Indices of ``max(1, int(N * ratio))`` patches chosen by greedy k-center on a sparse
    random projection of ``embedding`` (N, d)."""
    n, d = embedding.shape
    n_select = max(1, int(n * ratio))
    if n_select >= n:
        return torch.arange(n, device=embedding.device)
    k = jl_min_dim(n, eps)
    if k < d:
        proj = SparseRandomProjection(eps=eps, seed=seed).fit(n, d, embedding.device)
        reduced = proj.transform(embedding)
    else:  # deviation: no projection when it would not reduce the dimension
        reduced = embedding
    return k_center_greedy(reduced, n_select, seed=seed, progress=progress)


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


class PatchCoreModel:
    """A fitted PatchCore model: backbone + memory bank + thresholds + normalisation stats."""

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

    __call__ = score

    def render(self, image, item: ScoreItem, alpha: float = 0.4) -> dict[str, bytes]:
        """The three result files of one scored image: ``heat_map.png`` (JET over the image,
        alpha 0.4), ``mask.png`` (8-bit, 255 = anomalous) and ``anomaly_map.png`` (16-bit
        normalised map, see :func:`postprocess.anomaly_map_png16_bytes` for its scaling)."""
        from .postprocess import anomaly_map_png16_bytes, mask_png_bytes, render_heat_map

        return {
            "heat_map.png": render_heat_map(image, item.normalized_map, alpha),
            "mask.png": mask_png_bytes(item.mask),
            "anomaly_map.png": anomaly_map_png16_bytes(item.normalized_map, thresholds=self.thresholds,
                                                       stats=self.stats),
        }


# -------------------------------------------------------------------------------- fit


def _calibrate(model: PatchCoreModel, normal: Sequence, abnormal: Sequence,
               abnormal_masks: Sequence | None, progress: Progress | None) -> None:
    """Set thresholds and normalisation stats from validation predictions.

    * image threshold: F1-optimal when both normal and abnormal images are given, else the
      ``threshold_quantile`` quantile of the normal image scores;
    * pixel threshold: F1-optimal over all validation pixels when masks for the abnormal
      images are given (normal images count as all-normal pixels), else the
      ``threshold_quantile`` quantile of the per-image maxima of the normal images' maps (so
      that about that share of normal images gets an empty mask). anomalib falls back to the
      image threshold here; for PatchCore the map maximum is smaller than the image score
      (it is blurred), so that would make masks too small.
    * min/max: over all validation image scores and all validation map pixels (anomalib).
    """
    cfg = model.config
    q = float(cfg.threshold_quantile)
    all_images = list(normal) + list(abnormal)
    total = len(all_images)
    done = [0]

    def sub(stage, d, t):
        if progress is not None:
            progress("calibration", min(done[0] + d, total), total)

    n_scores, n_maps = model.predict_images_raw(normal, progress=sub)
    done[0] = len(normal)
    a_scores, a_maps = model.predict_images_raw(abnormal, progress=sub)
    scores = np.concatenate([n_scores, a_scores])
    maps = np.concatenate([n_maps, a_maps])

    if len(normal) and len(abnormal):
        labels = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
        image_thr, _ = f1_optimal_threshold(scores, labels)
        image_method = "f1"
    elif len(normal):
        image_thr, image_method = quantile_threshold(n_scores, q), "quantile"
    else:
        raise ValueError("calibration needs normal images")

    masks_given = abnormal_masks is not None and len(abnormal) and any(m is not None for m in abnormal_masks)
    pixel_method = "quantile"
    if masks_given:
        if len(abnormal_masks) != len(abnormal):
            raise ValueError("abnormal_masks must align with abnormal images")
        s = cfg.image_size
        gt = [np.zeros((s, s), bool)] * len(normal) + [
            _mask_to_array(m, s) if m is not None else None for m in abnormal_masks]
        keep = [i for i, m in enumerate(gt) if m is not None]
        pix_scores = maps[keep].reshape(-1)
        pix_labels = np.stack([gt[i] for i in keep]).reshape(-1)
        # bounded cost: at most 4M pixels (seeded subsample) for the precision-recall sweep
        limit = 1 << 22
        if pix_scores.size > limit:
            sel = np.random.default_rng(cfg.seed).choice(pix_scores.size, limit, replace=False)
            pix_scores, pix_labels = pix_scores[sel], pix_labels[sel]
        if pix_labels.any() and not pix_labels.all():
            pixel_thr, _ = f1_optimal_threshold(pix_scores, pix_labels)
            pixel_method = "f1"
    if pixel_method == "quantile":
        ref = n_maps if len(normal) else maps
        pixel_thr = quantile_threshold(ref.reshape(len(ref), -1).max(axis=1), q)

    model.thresholds = Thresholds(float(image_thr), float(pixel_thr), image_method, pixel_method,
                                  q if "quantile" in (image_method, pixel_method) else None)
    model.stats = NormalizationStats(float(scores.min()), float(scores.max()),
                                     float(maps.min()), float(maps.max()))
    model.info["calibration"] = {"normal": len(normal), "abnormal": len(abnormal),
                                 "masks": bool(masks_given)}


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
    = seeded random weights, the ``tiny`` profile). ``validation``: see :func:`_calibrate`.
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
    _calibrate(model, normal_val, abnormal_val, validation.abnormal_masks, progress)
    return model


def _grid(image_size: int) -> int:
    """Side of layer2's grid for a square input (stride 8 through conv1/maxpool/layer2)."""
    s = image_size
    s = (s + 2 * 3 - 7) // 2 + 1  # conv1
    s = (s + 2 * 1 - 3) // 2 + 1  # maxpool
    s = (s + 2 * 1 - 3) // 2 + 1  # layer2 stride-2 conv
    return s
