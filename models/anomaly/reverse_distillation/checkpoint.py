"""Training checkpoints as bytes: everything needed to continue from the next epoch exactly.

Format: ``torch.save`` of one dict, read back with ``torch.load(weights_only=True)`` (tensors,
numbers, strings, lists and dicts only: no pickled code runs when a checkpoint is loaded)::

    format                "visionjobs.reverse_distillation.checkpoint/1"
    config                ReverseDistillationConfig.to_dict()
    data_fingerprint      sha256 of the training and validation pixels (at the network size) and labels
    teacher_fingerprint   sha256 of the teacher's weights (backbone.weights_fingerprint)
    epoch                 epochs completed (1-based); training resumes at epoch + 1
    global_step           optimiser steps so far
    student               OCBE + decoder state_dict (bottleneck.*, decoder.*; BatchNorm buffers too)
    optimizer             torch.optim.Adam state_dict
    rng                   {"shuffle": the epoch-shuffling generator's state, "torch": CPU RNG state,
                           "cuda": [per-device states] (empty on CPU)}
    best                  {"monitor", "value" (None before the first epoch), "epoch",
                           "student": state_dict or None when the best epoch is this epoch}
    epochs_without_improvement, stopped_early, history (list of EpochMetrics dicts)
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import torch

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "checkpoint_nbytes", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = "visionjobs.reverse_distillation.checkpoint/1"
_KEYS = ("config", "data_fingerprint", "teacher_fingerprint", "epoch", "global_step", "student", "optimizer",
         "rng", "best", "epochs_without_improvement", "stopped_early", "history")


class CheckpointError(ValueError):
    """Not a readable checkpoint, or one made for other data, weights or settings."""


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def write_checkpoint(state: dict) -> bytes:
    """Serialise a checkpoint dict (see the module docstring) to bytes."""
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    doc = {"format": CHECKPOINT_FORMAT, **state}
    buf = io.BytesIO()
    torch.save(doc, buf)
    return buf.getvalue()


def read_checkpoint(data: bytes) -> dict:
    """Bytes from :func:`write_checkpoint` -> the dict (tensors on the CPU)."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise CheckpointError("resume_from: expected the bytes of a training checkpoint")
    try:
        doc = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise CheckpointError(f"resume_from: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"resume_from: not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        raise CheckpointError(f"resume_from: checkpoint lacks {missing}")
    return doc


def checkpoint_nbytes(teacher, config) -> int:
    """An upper bound of the bytes :func:`write_checkpoint` will produce for a student of
    ``teacher`` and ``config`` (a ``ReverseDistillationConfig``), computed before training
    (the student is built on the meta device: no memory): the student's weights and buffers
    twice (this epoch's and the best epoch's), Adam's two moments per parameter, and 1 MiB
    for the rest (history, RNG states, pickling). WRN50-2: about 850 MB; tiny: about 11 MB."""
    from .components import build_student

    with torch.device("meta"):
        bottleneck, decoder = build_student(teacher, config.ocbe_width_per_group)
    params = sum(p.numel() * 4 for m in (bottleneck, decoder) for p in m.parameters())
    state = sum(t.numel() * t.element_size() for m in (bottleneck, decoder) for t in m.state_dict().values())
    return int(2 * state + 2 * params + (1 << 20))
