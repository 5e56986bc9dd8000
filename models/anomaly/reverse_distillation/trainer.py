"""Training Reverse Distillation: epochs, per-epoch validation, the best checkpoint kept, early
stopping, cancellation within one step, and checkpoints that resume exactly.

Notebook use::

    splits = folder_splits(normal_images, abnormal_images, seed=0)
    result = train_reverse_distillation(splits, ReverseDistillationConfig(backbone="tiny", image_size=64,
                                        max_epochs=10), on_epoch=print)
    result.model.score(images)              # list[ScoreItem], as PatchCore
    result.model.test_metrics               # {"image_auroc", "image_f1", "pixel_auroc", ...}

Each epoch: the training images in a seeded random order (anomalib's shuffled loader, no
augmentation) in batches of ``batch_size`` (the last one smaller), one Adam step per batch on
the OCBE and decoder; then the validation split is scored. The monitored value (higher is
better for AUROC, lower for losses) is the validation image AUROC when the validation split
holds normal and abnormal images (the tutorial's choice), else the distillation loss on the
validation normals, else the mean training loss. As Lightning's ``ModelCheckpoint`` and
``EarlyStopping`` (``min_delta`` 0): an epoch improves only when strictly better; training stops
after ``patience`` epochs without improvement. The best epoch's weights become the model;
thresholds and normalisation then come from the validation split (calibration.calibrate; the
training images stand in when it has no normal image) and the metrics of the test split are
stored on the model.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..backbone import ARCHITECTURES, ResNet, build_backbone, weights_fingerprint
from ..calibration import calibrate
from ..common import Progress, images_to_uint8, resolve_device
from ..evaluation import evaluate
from ..folder import FolderSplits
from ..postprocess import NormalizationStats, Thresholds, auroc, f1_optimal_threshold
from .checkpoint import CheckpointError, _cpu, read_checkpoint, write_checkpoint
from .loss import distillation_loss
from .model import RESUME_FIELDS, ReverseDistillationConfig, ReverseDistillationModel, ReverseDistillationNet

__all__ = ["EpochMetrics", "StepProgress", "TrainResult", "TrainingCanceled", "train_reverse_distillation"]


@dataclass
class StepProgress:
    """After each optimiser step. ``epoch`` and ``step`` are 1-based."""

    epoch: int
    max_epochs: int
    step: int
    steps_per_epoch: int
    global_step: int
    loss: float


@dataclass
class EpochMetrics:
    """After each epoch's validation. Metrics that do not apply are None."""

    epoch: int
    max_epochs: int
    train_loss: float
    val_loss: float | None
    image_auroc: float | None
    image_f1: float | None  # at the F1-optimal ("adaptive") threshold of this validation
    monitor: str  # image_auroc | val_loss | train_loss
    value: float
    improved: bool
    best_epoch: int
    best_value: float
    epochs_without_improvement: int
    early_stop: bool  # training stops after this epoch
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingCanceled(Exception):
    """``should_cancel()`` returned true; raised before the next step (or validation batch)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"training canceled in epoch {epoch} before step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class TrainResult:
    model: ReverseDistillationModel
    history: list[EpochMetrics]
    best_epoch: int
    epochs_run: int  # last epoch completed
    stopped_early: bool
    resumed_from_epoch: int | None = None  # the checkpoint's epoch when resumed
    info: dict = field(default_factory=dict)


def _fingerprint(*tensors: torch.Tensor, labels=()) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr([int(y) for y in labels]).encode())
    return h.hexdigest()


def _teacher(cfg: ReverseDistillationConfig, backbone, weights, dev) -> ResNet:
    if backbone is None:
        return build_backbone(cfg.backbone, width=cfg.backbone_width, weights=weights, seed=cfg.seed, device=dev)
    expected_width = cfg.backbone_width or ARCHITECTURES[cfg.backbone].width
    if backbone.arch != cfg.backbone or backbone.base_width != expected_width:
        raise ValueError(f"backbone {backbone.arch}/{backbone.base_width} does not match config "
                         f"{cfg.backbone}/{expected_width}")
    return backbone.eval().requires_grad_(False).to(dev)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


@torch.inference_mode()
def _validate(net: ReverseDistillationNet, images: torch.Tensor, labels: np.ndarray, cfg, dev,
              cancel: Callable[[], None]) -> tuple[float | None, float | None, float | None]:
    """(val_loss over the normal images, image AUROC, F1 at the adaptive threshold)."""
    from .loss import anomaly_map

    net.eval()
    scores, losses, weights = [], [], []
    for a, b in _batches(len(images), cfg.batch_size):
        cancel()
        x = images[a:b].to(dev).float().div_(255.0)
        teacher, student = net(x)
        maps = anomaly_map(teacher, student, tuple(x.shape[-2:]), cfg.anomaly_map_mode, cfg.blur_sigma)
        scores.append(maps.flatten(1).amax(1).float().cpu().numpy())
        normal = torch.from_numpy(labels[a:b] == 0).to(dev)
        if normal.any():
            t_n, s_n = [t[normal] for t in teacher], [s[normal] for s in student]
            losses.append(float(distillation_loss(t_n, s_n, cfg.loss)))
            weights.append(int(normal.sum()))
    val_loss = float(np.average(losses, weights=weights)) if losses else None
    if not scores or labels.min() == labels.max():
        return val_loss, None, None
    s = np.concatenate(scores)
    return val_loss, float(auroc(s, labels)), float(f1_optimal_threshold(s, labels)[1])


def _resume(doc: dict, cfg, data_fp: str, teacher_fp: str) -> None:
    stored = ReverseDistillationConfig.from_dict(doc["config"]).validate()
    diff = [k for k in RESUME_FIELDS if getattr(stored, k) != getattr(cfg, k)]
    if diff:
        raise CheckpointError("resume_from: the checkpoint was trained with other settings: "
                              + ", ".join(f"{k}={getattr(stored, k)!r} (now {getattr(cfg, k)!r})" for k in diff))
    if doc["data_fingerprint"] != data_fp:
        raise CheckpointError("resume_from: the checkpoint was trained on other images (or another split)")
    if doc["teacher_fingerprint"] != teacher_fp:
        raise CheckpointError("resume_from: the checkpoint was trained with other teacher weights")


def train_reverse_distillation(
    splits: FolderSplits,
    config: ReverseDistillationConfig | None = None,
    *,
    backbone: ResNet | None = None,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[StepProgress], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_checkpoint: Callable[[bytes, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume_from: bytes | None = None,
    on_resume: Callable[[int, list[EpochMetrics]], None] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train on ``splits`` (:func:`folder.folder_splits`) and return the fitted model.

    ``backbone``: the teacher, already built (e.g. from a warm cache; never modified), else
    built from ``weights`` (torchvision-format file or state_dict; None = seeded random, the
    tiny profile). Callbacks: ``on_step(StepProgress)`` after every step,
    ``on_checkpoint(data: bytes, epoch: int)`` after every epoch (before ``on_epoch``),
    ``on_epoch(EpochMetrics)``; ``should_cancel()`` before every step and validation batch:
    true raises :class:`TrainingCanceled`. An exception raised by a callback propagates.
    ``resume_from``: checkpoint bytes from ``on_checkpoint``; training continues at the next
    epoch exactly as if it had not stopped (same data, teacher and settings required; only
    ``max_epochs`` and ``patience`` may differ); ``on_resume(epoch, history)`` is then called
    once with the checkpoint's epoch and its history, before the next step.
    ``progress(stage, done, total)`` reports the final "calibration" and "testing" passes.
    """
    cfg = (config or ReverseDistillationConfig()).validate()
    if not splits.train:
        raise ValueError("splits.train: Reverse Distillation needs at least one normal training image")
    dev = resolve_device(device)
    teacher = _teacher(cfg, backbone, weights, dev)
    train_u8, _ = images_to_uint8(splits.train, cfg.image_size)
    val = splits.validation
    val_u8, _ = images_to_uint8(val.images, cfg.image_size)
    val_labels = np.asarray(val.labels, dtype=np.int64)
    data_fp = _fingerprint(train_u8, val_u8, labels=val.labels)
    teacher_fp = weights_fingerprint(teacher)
    monitor = ("image_auroc" if val.counts()["normal"] and val.counts()["abnormal"]
               else "val_loss" if val.counts()["normal"] else "train_loss")
    higher_better = monitor == "image_auroc"

    net = ReverseDistillationNet(teacher, cfg)
    optimizer = torch.optim.Adam(net.student_parameters(), lr=cfg.learning_rate, betas=cfg.betas)
    shuffle = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    epoch, global_step, wait, stopped = 0, 0, 0, False
    best_value, best_epoch, best_state = None, 0, None
    history: list[EpochMetrics] = []
    resumed_from = None
    if resume_from is not None:
        doc = read_checkpoint(resume_from)
        _resume(doc, cfg, data_fp, teacher_fp)
        net.load_student_state_dict(doc["student"])
        optimizer.load_state_dict(doc["optimizer"])
        shuffle.set_state(doc["rng"]["shuffle"])
        torch.set_rng_state(doc["rng"]["torch"])
        if dev.type == "cuda" and doc["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(doc["rng"]["cuda"])
        epoch, global_step = int(doc["epoch"]), int(doc["global_step"])
        wait, stopped = int(doc["epochs_without_improvement"]), bool(doc["stopped_early"])
        best = doc["best"]
        best_value, best_epoch = best["value"], int(best["epoch"])
        best_state = best["student"] if best["student"] is not None else _cpu(net.student_state_dict())
        history = [EpochMetrics(**h) for h in doc["history"]]
        resumed_from = epoch
        if on_resume is not None:
            on_resume(epoch, list(history))

    def cancel(step: int = 0) -> None:
        if should_cancel is not None and should_cancel():
            raise TrainingCanceled(epoch, step)

    n = train_u8.shape[0]
    steps = math.ceil(n / cfg.batch_size)
    while not stopped and epoch < cfg.max_epochs:
        epoch += 1
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=shuffle)
        loss_sum = 0.0
        for step, (a, b) in enumerate(_batches(n, cfg.batch_size), start=1):
            cancel(step)
            x = train_u8[order[a:b]].to(dev, non_blocking=True).float().div_(255.0)
            loss = net.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            step_loss = float(loss.detach())
            loss_sum += step_loss * (b - a)
            if on_step is not None:
                on_step(StepProgress(epoch, cfg.max_epochs, step, steps, global_step, step_loss))
        train_loss = loss_sum / n
        val_loss, image_auroc, image_f1 = _validate(net, val_u8, val_labels, cfg, dev, cancel)
        value = {"image_auroc": image_auroc, "val_loss": val_loss, "train_loss": train_loss}[monitor]
        improved = best_value is None or (value > best_value if higher_better else value < best_value)
        if improved:
            best_value, best_epoch, wait = value, epoch, 0
            best_state = _cpu(net.student_state_dict())
        else:
            wait += 1
        stopped = bool(cfg.patience) and wait >= cfg.patience
        metrics = EpochMetrics(epoch, cfg.max_epochs, train_loss, val_loss, image_auroc, image_f1, monitor,
                               float(value), improved, best_epoch, float(best_value), wait, stopped,
                               time.perf_counter() - t0)
        history.append(metrics)
        if on_checkpoint is not None:
            cuda_states = torch.cuda.get_rng_state_all() if dev.type == "cuda" else []
            on_checkpoint(write_checkpoint({
                "config": cfg.to_dict(), "data_fingerprint": data_fp, "teacher_fingerprint": teacher_fp,
                "epoch": epoch, "global_step": global_step, "student": _cpu(net.student_state_dict()),
                "optimizer": optimizer.state_dict(),
                "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state(), "cuda": cuda_states},
                "best": {"monitor": monitor, "value": float(best_value), "epoch": best_epoch,
                         "student": None if best_epoch == epoch else best_state},
                "epochs_without_improvement": wait, "stopped_early": stopped,
                "history": [h.to_dict() for h in history]}), epoch)
        if on_epoch is not None:
            on_epoch(metrics)

    if best_state is not None:
        net.load_student_state_dict(best_state)
    model = ReverseDistillationModel(cfg, net.eval(), Thresholds(0.0, 0.0), NormalizationStats(0.0, 1.0, 0.0, 1.0))
    normal_cal = val.normal or list(splits.train)
    calibrate(model, normal_cal, val.abnormal, val.abnormal_masks, progress)
    test = splits.test
    test_metrics = evaluate(model, test.images, test.labels, test.masks, progress=progress, seed=cfg.seed)
    best_row = next((h for h in history if h.epoch == best_epoch), None)
    model.info.update({
        "backbone_fingerprint": teacher_fp,
        "backbone_weights": teacher.weights_source,
        "layers": ["layer1", "layer2", "layer3"],
        "split": splits.record,
        "training": {"epochs_run": epoch, "best_epoch": best_epoch, "monitor": monitor,
                     "best_value": best_value, "stopped_early": stopped, "global_step": global_step,
                     "resumed_from_epoch": resumed_from, "history": [h.to_dict() for h in history]},
        "validation_metrics": ({k: getattr(best_row, k) for k in ("val_loss", "image_auroc", "image_f1")}
                               if best_row else {}),
        "test_metrics": test_metrics,
        "counts": {"train_images": len(splits.train), "validation": val.counts(), "test": test.counts(),
                   "calibration_normal_source": "validation" if val.normal else "train"},
    })
    return TrainResult(model, history, best_epoch, epoch, stopped, resumed_from, model.info)
