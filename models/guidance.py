"""Guidance arithmetic shared by the SD-family pipelines (colorization, video).

Kept free of any model code so every pipeline combines noise predictions the same way and
tests can check the formulas against a hand computation.
"""

from __future__ import annotations

import torch


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): eps_u + s * (eps_c - eps_u).

    s = 1 gives eps_c, s = 0 gives eps_u; s > 1 extrapolates away from the unconditional
    prediction."""
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond {tuple(eps_uncond.shape)} and eps_cond {tuple(eps_cond.shape)} differ in shape")
    return eps_uncond + scale * (eps_cond - eps_uncond)


def split_cfg_batch(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a [uncond, cond] batch (one forward for both halves) into its two halves."""
    if eps.shape[0] % 2:
        raise ValueError(f"a CFG batch has an even batch size, got {eps.shape[0]}")
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond, eps_cond
