"""Control Color colorization: Lab helpers, strokes, exemplar, SAG, deformable decoder, the
diffusers pipeline, tiny-profile builders, the checkpoint converter.

Imports are lazy (PEP 562): `models.colorization.weights_layout` and `.stroke_spec` are
standard-library only and the API process imports them without pulling in torch.
"""

from importlib import import_module

_EXPORTS = {
    "ControlColorPipeline": "models.colorization.pipeline",
    "ColorizationOutput": "models.colorization.pipeline",
    "DEFAULT_NEGATIVE_PROMPT": "models.colorization.pipeline",
    "PROMPT_SUFFIX": "models.colorization.pipeline",
    "prepare_input": "models.colorization.lab",
    "replace_l": "models.colorization.lab",
    "working_size": "models.colorization.lab",
    "validate_strokes": "models.colorization.stroke_spec",
    "exemplar_weights_missing": "models.colorization.weights_layout",
    "deformable_weights_missing": "models.colorization.weights_layout",
    "guide_weights_missing": "models.colorization.weights_layout",
    "convert_ctrlcolor": "models.colorization.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
