"""Worker-side timing probe of bench/service.py.

bench/service.py puts this folder on the PYTHONPATH of the `visionjobs worker` it starts (and
of nothing else), with BENCH_PROBE_FILE naming a JSON-lines file. Python imports
``sitecustomize`` at start-up; this one installs an import hook that, once the worker's own
modules load, wraps three methods with timers. It measures only: every wrapped call goes to
the original with the same arguments and returns its result.

One line per job run by `Runner.execute`:
    job          job id
    exec_t0/t1   wall clock (time.time) around Runner.execute: claim .. final state written
    load_s       time in Runner.pipeline (the warm-cache lookup; the model load on a cold worker)
    pipe_t0/t1   wall clock around the pipeline call (ControlColorPipeline.run_batch)
    pipeline_s   its duration (perf_counter)
    callback_s   time spent inside the per-step progress / cancel checks (JobControl.report
                 called from the pipeline's step callback: store reads and writes), part of
                 pipeline_s but service work
    callback_n   number of those calls
    status       what execute returned
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time

_FILE = os.environ.get("BENCH_PROBE_FILE")
_local = threading.local()
_lock = threading.Lock()


def _emit(rec: dict) -> None:
    with _lock, open(_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _current() -> dict | None:
    return getattr(_local, "rec", None)


def _patch_runner(mod) -> None:
    cls = mod.Runner
    orig_execute, orig_pipeline = cls.execute, cls.pipeline

    def execute(self, job_id):
        rec = {"job": job_id, "pid": os.getpid(), "exec_t0": time.time(), "load_s": 0.0, "pipeline_s": None,
               "callback_s": 0.0, "callback_n": 0}
        _local.rec = rec
        status = None
        try:
            status = orig_execute(self, job_id)
            return status
        finally:
            rec["exec_t1"] = time.time()
            rec["status"] = status
            rec.pop("in_pipeline", None)
            _local.rec = None
            _emit(rec)

    def pipeline(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return orig_pipeline(self, *args, **kwargs)
        finally:
            rec = _current()
            if rec is not None:
                rec["load_s"] += time.perf_counter() - t

    cls.execute, cls.pipeline = execute, pipeline


def _patch_pipeline(mod) -> None:
    cls = mod.ControlColorPipeline
    orig = cls.run_batch  # __call__ and the worker's batches both go through it

    def run_batch(self, *args, **kwargs):
        rec = _current()
        if rec is None:
            return orig(self, *args, **kwargs)
        rec["in_pipeline"] = True
        rec["pipe_t0"] = time.time()
        t = time.perf_counter()
        try:
            return orig(self, *args, **kwargs)
        finally:
            rec["pipeline_s"] = time.perf_counter() - t
            rec["pipe_t1"] = rec["pipe_t0"] + rec["pipeline_s"]
            rec["in_pipeline"] = False

    cls.run_batch = run_batch


def _patch_control(mod) -> None:
    cls = mod.JobControl
    orig = cls.report

    def report(self, *args, **kwargs):
        rec = _current()
        if rec is None or not rec.get("in_pipeline"):
            return orig(self, *args, **kwargs)
        t = time.perf_counter()
        try:
            return orig(self, *args, **kwargs)
        finally:
            rec["callback_s"] += time.perf_counter() - t
            rec["callback_n"] += 1

    cls.report = report


_HOOKS = {
    "worker.runner": _patch_runner,
    "worker.control": _patch_control,
    "models.colorization.pipeline": _patch_pipeline,
}


class _ProbeFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        hook = _HOOKS.get(name)
        if hook is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        orig_exec = spec.loader.exec_module

        def exec_module(module):
            orig_exec(module)
            hook(module)

        spec.loader.exec_module = exec_module
        return spec


if _FILE:
    sys.meta_path.insert(0, _ProbeFinder())
