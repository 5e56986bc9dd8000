"""Control Color colorization: Lab helpers, the diffusers pipeline, tiny-profile builders."""

from models.colorization.lab import prepare_input, replace_l, working_size
from models.colorization.pipeline import (
    DEFAULT_NEGATIVE_PROMPT,
    PROMPT_SUFFIX,
    ColorizationOutput,
    ControlColorPipeline,
)

__all__ = [
    "ControlColorPipeline",
    "ColorizationOutput",
    "DEFAULT_NEGATIVE_PROMPT",
    "PROMPT_SUFFIX",
    "prepare_input",
    "replace_l",
    "working_size",
]
