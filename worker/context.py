"""What a job handler receives: its job, its control (progress, cancel, lease) and the
worker's runtime (settings, stores, device, warm models). Handlers import this module, never
the runner: the runner imports the handlers (through worker/registry.py), not the reverse."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, Protocol

from service.storage.base import ObjectNotFound, ObjectStore
from service.store.base import JobRecord, JobStore
from worker.errors import InvalidInput

if TYPE_CHECKING:  # pragma: no cover
    from worker.config import WorkerSettings
    from worker.control import JobControl


class Runtime(Protocol):
    """The part of the runner a handler may use (worker.runner.Runner provides it)."""

    settings: "WorkerSettings"
    store: JobStore
    objects: ObjectStore
    name: str

    profiles: dict[str, str]  # kind -> resolved profile, for the kinds resolved so far

    @property
    def device(self) -> str: ...

    @property
    def cache(self) -> Any: ...  # worker.model_cache.ModelCache: get(key, loader)

    def profile_for(self, kind: str) -> str: ...

    def pipeline(self, model: str, kind: str | None = None) -> Any: ...


@dataclass
class JobContext:
    """One job's view of the worker. A handler whose job ran something other than the kind's
    resolved profile (a fitted model's own backbone, an explicit tiny backbone) sets
    `model_profile`; the final state reports `reported_profile()`."""

    job: JobRecord
    control: "JobControl"
    runner: Runtime
    model_profile: str | None = None

    def reported_profile(self) -> str | None:
        """What the final state says ran: the handler's word, else the kind's resolved profile."""
        return self.model_profile or self.runner.profiles.get(self.job.kind)

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    @property
    def settings(self) -> "WorkerSettings":
        return self.runner.settings

    @property
    def store(self) -> JobStore:
        return self.runner.store

    @property
    def objects(self) -> ObjectStore:
        return self.runner.objects

    @property
    def device(self) -> str:
        return self.runner.device

    @contextmanager
    def timed(self, what: str):
        """Adds the block's wall time to the job's `metrics[what]` (load_s, upload_s)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.control.timings[what] = self.control.timings.get(what, 0.0) + time.perf_counter() - start

    def cached(self, key: Hashable, loader):
        """A warm object (fitted model, tuned weights) shared between jobs; `loader()` on a miss."""
        with self.timed("load_s"):
            return self.runner.cache.get(key, loader)

    def read_upload(self, upload_id: str, field: str) -> bytes:
        rec = self.runner.store.get_upload(upload_id)
        if rec is None or rec.tenant != self.job.tenant:
            raise InvalidInput(f"{field}: upload {upload_id} no longer exists")
        try:
            return self.runner.objects.get(rec.key)
        except ObjectNotFound:
            raise InvalidInput(f"{field}: the file of upload {upload_id} is gone")

    def write_output(self, name: str, data: bytes, content_type: str) -> str:
        self.control.check()  # a stale attempt must not overwrite the live one's files
        key = f"jobs/{self.job.id}/{name}"
        with self.timed("upload_s"):
            self.runner.objects.put(key, data, content_type)
        return key

    def pipeline(self, model: str):
        """The warm pipeline of a `models.profiles` entry, under this job kind's profile."""
        with self.timed("load_s"):
            return self.runner.pipeline(model, self.job.kind)
