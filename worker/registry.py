"""The worker side of the job-kind registry (service/kinds.py): resolves each declaration's
"module:attribute" strings to the handler, warm-up, batching and capability functions, on
first use (so importing the runner imports no handler, and a worker serving one queue
imports only that kind's code)."""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from service.kinds import KINDS, JobKind


def resolve(ref: str) -> Any:
    """`"package.module:attribute"` -> the attribute."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class KindRuntime:
    spec: JobKind
    handler: Callable
    warmup: Callable | None
    batch_key: Callable | None
    run_batch: Callable | None
    capabilities: Callable | None

    @property
    def name(self) -> str:
        return self.spec.name


@functools.cache
def runtime(kind: str) -> KindRuntime:
    """The resolved declaration of `kind`; KeyError for a kind nobody declared."""
    spec = KINDS[kind]
    opt = lambda ref: resolve(ref) if ref else None  # noqa: E731
    return KindRuntime(spec, resolve(spec.handler), opt(spec.warmup), opt(spec.batch_key), opt(spec.run_batch),
                       opt(spec.capabilities))
