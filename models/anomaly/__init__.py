"""Image anomaly detection on a plain-torch ResNet/WideResNet backbone: PatchCore (fit, no
training) and Reverse Distillation (trained; models.anomaly.reverse_distillation).

Notebook use::

    from models.anomaly import PatchCoreConfig, fit_patchcore, save_artifact, load_artifact
    model = fit_patchcore(normal_images, PatchCoreConfig(backbone="tiny"), device="cpu")
    items = model.score(test_images, batch_size=8)      # list[ScoreItem]
    png = render_heat_map(test_images[0], items[0].normalized_map)
    files = save_artifact(model)                        # {"patchcore.json": ..., "memory_bank.safetensors": ...}
    model = load_artifact(files)

    splits = folder_splits(normal_images, abnormal_images, seed=0)   # anomalib Folder's splits
    result = train_reverse_distillation(splits, ReverseDistillationConfig(backbone="tiny"))
    items = result.model.score(test_images)             # the same ScoreItem results

Names are imported lazily (PEP 562) so that ``models.anomaly.artifact``'s JSON helpers and
``models.anomaly.postprocess`` can be used without importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # backbone
    "ARCHITECTURES": "backbone",
    "BackboneWeightsError": "backbone",
    "ResNet": "backbone",
    "build_backbone": "backbone",
    "load_backbone_weights": "backbone",
    "weights_fingerprint": "backbone",
    # patchcore
    "PatchCoreConfig": "patchcore",
    "PatchCoreModel": "patchcore",
    "Progress": "patchcore",
    "ScoreItem": "patchcore",
    "Validation": "patchcore",
    "fit_patchcore": "patchcore",
    # postprocess
    "Box": "postprocess",
    "NormalizationStats": "postprocess",
    "Thresholds": "postprocess",
    "anomaly_map_npy_bytes": "postprocess",
    "anomaly_map_png16_bytes": "postprocess",
    "auroc": "postprocess",
    "decode_anomaly_map_png16": "postprocess",
    "mask_png_bytes": "postprocess",
    "render_heat_map": "postprocess",
    # shared: folder datasets, held-out metrics, results
    "FolderSplits": "folder",
    "folder_splits": "folder",
    "group_folder_entries": "folder",
    "evaluate": "evaluation",
    "render_segmentation": "postprocess",
    # reverse distillation
    "ReverseDistillationConfig": "reverse_distillation",
    "ReverseDistillationModel": "reverse_distillation",
    "TrainingCanceled": "reverse_distillation",
    "train_reverse_distillation": "reverse_distillation",
    # artifact (PatchCore's; Reverse Distillation's is models.anomaly.reverse_distillation.artifact)
    "ArtifactError": "artifact",
    "load_artifact": "artifact",
    "read_artifact_meta": "artifact",
    "save_artifact": "artifact",
    "update_thresholds": "artifact",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
