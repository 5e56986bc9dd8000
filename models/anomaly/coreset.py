"""Coreset sampling for PatchCore: greedy k-center selection on a sparse random projection
(Johnson-Lindenstrauss). See models/anomaly/patchcore.py for the deviations from anomalib."""
from __future__ import annotations

import contextlib
import math

import torch

from .common import Progress

__all__ = ["SparseRandomProjection", "jl_min_dim", "k_center_greedy", "select_coreset"]


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
