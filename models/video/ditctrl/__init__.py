"""DiTCtrl: tuning-free multi-prompt longer video generation on CogVideoX (diffusers).

    layout      segments, frame counts, triangle blend weights, transition embeddings
    attention   KV-sharing attention processor (step/layer windows), mask-guided variant
    pipeline    DiTCtrlPipeline: the latent-blending loop, chunked VAE decode
    metrics     CSCV transition-smoothness metric
    tiny        tiny (tests) and full-size random (benchmarks) components

Names below are imported lazily, so `models.video.ditctrl.layout` does not pull in diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DiTCtrlPipeline": "pipeline", "VideoGenerationOutput": "pipeline", "parse_kv_sharing": "pipeline",
    "KVSharing": "attention", "DiTCtrlAttnProcessor": "attention", "DiTCtrlControl": "attention",
    "Layout": "layout", "Segment": "layout", "plan": "layout", "frame_count": "layout", "blend_weights": "layout",
    "CSCVScorer": "metrics", "cscv": "metrics", "cscv_from_features": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
