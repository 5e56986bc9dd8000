"""The registry of job kinds (service/kinds.py): every part reads one declaration per kind."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from models import profiles
from service.kinds import KINDS, JobKind, kinds_on, queues, select
from worker.registry import resolve, runtime

ROOT = Path(__file__).resolve().parents[2]


def test_every_declaration_resolves_and_names_registered_models():
    assert set(KINDS) == {"anomaly.fit", "anomaly.score", "colorize", "video.edit", "video.generate", "subject.generate",
                          "subject.tune"}
    for name, kind in KINDS.items():
        rt = runtime(name)
        assert callable(rt.handler), name
        assert kind.models, f"{name}: declares no model"
        for model in kind.models + kind.optional_models:
            assert model in profiles.REGISTRY, f"{name}: model {model!r} is not in models.profiles.REGISTRY"
        assert (rt.batch_key is None) == (rt.run_batch is None)
        assert kind.path.startswith("/v1/") and kind.request and kind.result, name
        for dotted in (kind.request, kind.result):  # GET /v1/kinds shows their schemas
            assert issubclass(resolve(dotted), BaseModel), dotted
    assert runtime("colorize").batch_key is not None  # dynamic batching is declared, not hard-coded
    assert queues() == list(KINDS) and kinds_on(["colorize", "anomaly.fit"]) == ["anomaly.fit", "colorize"]
    assert select(["anomaly", "colorize"]) == ["anomaly.fit", "anomaly.score", "colorize"]
    with pytest.raises(ValueError, match="unknown kind"):
        select(["teleport"])
    with pytest.raises(ValueError, match="module:attribute"):
        resolve("worker.jobs.colorize.run")
    with pytest.raises(ValueError, match="go together"):
        JobKind("x", "x", "m:f", batch_key="m:k")


def _imports(path: Path, package: str) -> set[str]:
    """Every module `path` imports, at any depth (function bodies and TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _worker_graph() -> dict[str, set[str]]:
    modules = {}
    for path in (ROOT / "worker").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rsplit(".", 1)[0]
        modules[name] = (path, package)
    return {name: {m for m in _imports(path, package) if m in modules and m != name}
            for name, (path, package) in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_worker_imports_have_no_cycle_and_handlers_never_import_the_runner():
    graph = _worker_graph()
    assert {"worker.runner", "worker.batching", "worker.context", "worker.jobs.colorize"} <= set(graph)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    for name, deps in graph.items():
        if name.startswith("worker.jobs"):
            assert not deps & {"worker.runner", "worker.batching", "worker.registry"}, (name, deps)
    assert "worker.jobs.colorize" not in graph["worker.batching"]  # batching knows no kind


def test_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_declaration_the_api_reads_is_standard_library_only():
    code = ("import sys, service.kinds; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'worker', "
            "'models', 'fastapi', 'pydantic')]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- a new kind is one declaration (plus its handler module) -----------------------------------

def echo_handler(ctx) -> dict:
    ctx.control.report(0.5, "echoing", force=True)
    return {"echo": ctx.params["text"], "device": ctx.device}


def echo_capabilities(rt) -> dict:
    return {"loud": ["echo/loud.bin"]}


def test_a_declared_kind_runs_reports_and_is_listed(tmp_path, monkeypatch):
    from service.storage import build_object_store
    from service.store.base import JobRecord, new_id
    from service.store.sqlite_store import SqliteJobStore
    from worker.capabilities import kind_capabilities
    from worker.config import WorkerSettings
    from worker.runner import Runner

    kind = JobKind("echo.say", "test kind", handler="tests.worker.test_registry:echo_handler",
                   models=("colorize",), capabilities="tests.worker.test_registry:echo_capabilities")
    monkeypatch.setitem(KINDS, kind.name, kind)
    runtime.cache_clear()
    try:
        settings = WorkerSettings(data_dir=tmp_path, model_profile="tiny", progress_interval_s=0.0,
                                  redis_url=None, s3_bucket=None)
        runner = Runner(settings, SqliteJobStore(tmp_path / "jobs.sqlite3"), build_object_store(settings), name="t")
        job = runner.store.create_job(JobRecord(id=new_id("job"), tenant="t", kind="echo.say",
                                                params={"text": "hi"}))[0]
        assert runner.execute(job.id) == "succeeded"
        done = runner.store.get_job(job.id)
        assert done.result == {"echo": "hi", "device": "cpu"} and done.model_profile == "tiny"
        caps = kind_capabilities(runner, "echo.say")
        assert caps["ready"] and caps["features"] == {"loud": ["echo/loud.bin"]} and caps["loud"] is False
        assert "echo.say" in queues() and select(["echo"]) == ["echo.say"]
    finally:
        runtime.cache_clear()
