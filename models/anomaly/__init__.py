"""Image anomaly detection: PatchCore on a plain-torch ResNet/WideResNet backbone.

Notebook use::

    from models.anomaly import PatchCoreConfig, fit_patchcore, save_artifact, load_artifact
    model = fit_patchcore(normal_images, PatchCoreConfig(backbone="tiny"), device="cpu")
    items = model.score(test_images, batch_size=8)      # list[ScoreItem]
    png = render_heat_map(test_images[0], items[0].normalized_map)
    files = save_artifact(model)                        # {"patchcore.json": ..., "memory_bank.safetensors": ...}
    model = load_artifact(files)

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
    # artifact
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
