"""Reverse Distillation (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022), as published and as anomalib implements it
(``anomalib.models.image.reverse_distillation``).

A frozen ImageNet teacher (WideResNet-50-2, ``layer1..layer3``; the backbone of
models/anomaly/backbone.py) encodes an image; the one-class bottleneck embedding (OCBE) fuses
its three maps into one layer4-like map; the student decoder (a ResNet run backwards) must
reproduce the teacher's three maps from it. Trained on normal images only (loss: 1 - cosine
similarity per location), the student fails where an image departs from them: the anomaly
map is the per-scale cosine distance, upsampled, summed and blurred (sigma 4); the image score
is its maximum. See loss.py, components.py and trainer.py for the deviations.

Notebook use::

    from models.anomaly.folder import folder_splits
    from models.anomaly.reverse_distillation import (ReverseDistillationConfig, load_artifact,
                                                     save_artifact, train_reverse_distillation)
    splits = folder_splits(normal_images, abnormal_images, seed=0)
    result = train_reverse_distillation(splits, ReverseDistillationConfig(backbone="tiny", image_size=64))
    items = result.model.score(images)            # list[ScoreItem], as PatchCore's
    files = save_artifact(result.model)           # {"reverse_distillation.json", "student.safetensors"}
    model = load_artifact(files)
"""
from __future__ import annotations

from .artifact import CONFIG_FILE, STUDENT_FILE, load_artifact, read_artifact_meta, save_artifact, update_thresholds
from .checkpoint import CheckpointError, read_checkpoint
from .components import DeResNet, OneClassBottleneck
from .loss import anomaly_map, distillation_loss
from .model import LAYERS, ReverseDistillationConfig, ReverseDistillationModel, ReverseDistillationNet
from .trainer import EpochMetrics, StepProgress, TrainingCanceled, TrainResult, train_reverse_distillation

__all__ = [
    "CONFIG_FILE",
    "CheckpointError",
    "DeResNet",
    "EpochMetrics",
    "LAYERS",
    "OneClassBottleneck",
    "ReverseDistillationConfig",
    "ReverseDistillationModel",
    "ReverseDistillationNet",
    "STUDENT_FILE",
    "StepProgress",
    "TrainResult",
    "TrainingCanceled",
    "anomaly_map",
    "distillation_loss",
    "load_artifact",
    "read_artifact_meta",
    "read_checkpoint",
    "save_artifact",
    "train_reverse_distillation",
    "update_thresholds",
]
