"""The steps a Redis job-store operation yields (see redis_ops.py): what it needs, without I/O."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple = ()
    kwargs: dict | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Compute:
    fn: Callable
    args: tuple = ()
    heavy: bool = False


def call(name: str, *args, **kwargs) -> Call:
    return Call(name, args, kwargs or None)
