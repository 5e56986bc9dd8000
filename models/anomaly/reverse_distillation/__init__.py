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

import importlib

_EXPORTS = {
    "CONFIG_FILE": "artifact", "STUDENT_FILE": "artifact", "load_artifact": "artifact",
    "read_artifact_meta": "artifact", "save_artifact": "artifact", "update_thresholds": "artifact",
    "CheckpointError": "checkpoint", "checkpoint_nbytes": "checkpoint", "read_checkpoint": "checkpoint",
    "DeResNet": "components", "OneClassBottleneck": "components",
    "anomaly_map": "loss", "distillation_loss": "loss",
    "LAYERS": "model", "ReverseDistillationConfig": "model", "ReverseDistillationModel": "model",
    "ReverseDistillationNet": "model",
    "EpochMetrics": "trainer", "StepProgress": "trainer", "TrainResult": "trainer", "TrainingCanceled": "trainer",
    "train_reverse_distillation": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy (PEP 562): the artifact's JSON helpers work without importing torch
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
