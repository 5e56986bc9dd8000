"""Argument checks shared by the subject pipelines: each raises ValueError naming the argument
and what would be accepted (the worker maps these to a 4xx naming the field)."""

from __future__ import annotations

import math

MAX_PROMPT_CHARS = 2000  # a guardrail of the pipeline itself; the API sets its own (stricter) limit
MAX_SIDE = 2048


def check_text(name: str, value, allow_empty: bool = False, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(value, str):
        raise ValueError(f"`{name}` has to be a str, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"`{name}` is empty: give a non-empty text")
    if len(value) > max_chars:
        raise ValueError(f"`{name}` has {len(value)} characters; at most {max_chars} are allowed")
    return value


def check_int(name: str, value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"`{name}` has to be an int in [{low}, {high}], got {value!r}")
    return value


def check_number(name: str, value, low: float, high: float = math.inf, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"({low}" if low_open else f"[{low}"
        raise ValueError(f"`{name}` has to be a finite number in {bound}, {high}], got {value!r}")
    return float(value)


def check_size(name: str, value, multiple: int, low: int = 8, high: int = MAX_SIDE) -> int:
    check_int(name, value, low, high)
    if value % multiple:
        raise ValueError(f"`{name}` has to be a multiple of {multiple}, got {value}")
    return value


def check_callback(callback) -> None:
    if callback is not None and not callable(callback):
        raise ValueError("`callback_on_step_end` has to be callable(pipe, step_index, timestep, callback_kwargs)")


def check_generator(generator, n: int) -> None:
    if isinstance(generator, list) and len(generator) != n:
        raise ValueError(f"`generator` is a list of {len(generator)}; pass one per image ({n}) or a single one")
