"""One lock for every environment: requirements/lock.txt pins exactly what development installs,
and the Makefile (so `make test` and CI) and both Docker targets install with it; the worker
image's torch is the locked one. Checked statically (no Docker engine needed)."""
from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy.test_compose_and_dockerfile import DOCKERFILE, ROOT, parse_dockerfile, stage_chain

LOCK_PATH = "requirements/lock.txt"


def _lockmod():
    spec = importlib.util.spec_from_file_location("lock", ROOT / "requirements" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LOCK = _lockmod()

# The worker stage as it was before the lock (pytorch/pytorch base, nothing else pinned): the
# image then ran torch 2.5.1 with whatever transformers PyPI had (5.x: no CLIPTextModel).
OLD_WORKER = '''
ARG TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM python:3.11-slim-bookworm AS base
RUN pip wheel --no-deps --wheel-dir /wheels .
FROM python:3.11-slim-bookworm AS api
COPY --from=base /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
FROM ${TORCH_IMAGE} AS worker
COPY --from=base /wheels /wheels
RUN pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \\
    && pip install -c /tmp/torch-constraint.txt "$(ls /wheels/*.whl)[ml]" \\
    && rm -rf /wheels /tmp/torch-constraint.txt
'''


def pip_installs(run: str) -> list[str]:
    return [seg.strip() for seg in re.split(r"&&|;|\|", run) if re.match(r"\s*(\S*/)?pip3? install\b", seg)]


def locked_torch(segment: str, lock_dest: str | None, lock: dict[str, str]) -> str | None:
    """The torch version a pip install segment asks for (a literal, or read from the lock)."""
    m = re.search(r"torch==(\$\(sed -n 's/\^torch==//p' (\S+)\)|[\w.]+)", segment)
    if not m:
        return None
    if m.group(2) is not None:
        return lock["torch"] if m.group(2) == lock_dest else f"from {m.group(2)}"
    return m.group(1)


def install_problems(text: str, lock: dict[str, str]) -> list[str]:
    stages, problems = parse_dockerfile(text), []
    for target in ("api", "worker"):
        if target not in stages:
            problems.append(f"no `{target}` target")
            continue
        chain, _ = stage_chain(stages, target)
        own = [(op, a) for s in reversed(chain) for op, a in s.instructions]
        dests = [a.split()[-1] for op, a in own if op == "COPY" and LOCK_PATH in a.split()[:-1]]
        dest = dests[-1] if dests else None
        if dest is None:
            problems.append(f"{target}: does not COPY {LOCK_PATH}")
        installs = [seg for op, a in own if op == "RUN" for seg in pip_installs(a)]
        if not installs:
            problems.append(f"{target}: installs nothing with pip")
        for seg in installs:
            if dest is None or not re.search(rf"(-c|--constraint|-r)\s+{re.escape(dest)}\b", seg):
                problems.append(f"{target}: `{seg[:80]}` does not install with the lock")
        base_torch = [m.group(1) for s in chain if (m := re.search(r"torch\S*?:(\d+\.\d+\.\d+)", s.image))]
        if target == "worker":
            torches = [v for seg in installs if (v := locked_torch(seg, dest, lock))]
            for version in base_torch + torches:
                if version != lock["torch"]:
                    problems.append(f"worker: torch {version}, the lock (and the suite) has {lock['torch']}")
            if not torches:
                problems.append(f"worker: does not install torch=={lock['torch']} from the lock")
    return problems


def test_the_lock_pins_exactly_what_development_installs():
    locked, installed = LOCK.read(), LOCK.closure()
    drift = {n: (locked.get(n), installed.get(n)) for n in set(locked) | set(installed) if locked.get(n) != installed.get(n)}
    assert drift == {}, f"lock vs installed (run `make lock` after changing a dependency): {drift}"
    assert {"torch", "transformers", "diffusers", "fastapi", "pytest"} <= set(locked)


def test_the_pyproject_bounds_hold_for_the_locked_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = LOCK.read()
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for raw in reqs:
        req = Requirement(raw)
        assert req.specifier.contains(locked[LOCK.canonical(req.name)], prereleases=True), (raw, locked[LOCK.canonical(req.name)])
    torch_floor = [Requirement(r) for r in project["optional-dependencies"]["ml"] if r.startswith("torch")][0]
    assert not torch_floor.specifier.contains("2.5.1")  # transformers 5 treats torch < 2.6 as absent


def test_both_images_install_from_the_lock_and_the_worker_runs_the_locked_torch():
    assert install_problems(DOCKERFILE.read_text(), LOCK.read()) == []


def test_the_old_dockerfile_fails_the_check():
    problems = install_problems(OLD_WORKER, LOCK.read())
    assert any("torch 2.5.1" in p for p in problems), problems
    assert any(p.startswith("api:") and "lock" in p for p in problems)
    # and one that reads torch from a file other than the lock, or pins another version
    good = DOCKERFILE.read_text()
    assert install_problems(good.replace('"torch==$(sed', '"torch==2.5.1" #$(sed'), LOCK.read())
    assert install_problems(good.replace("-c /tmp/lock.txt /wheels", "/wheels"), LOCK.read())


def test_make_and_ci_install_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^LOCK := {re.escape(LOCK_PATH)}$", makefile, re.M)
    stamp = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    installs = [line.strip() for line in stamp.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c $(LOCK)" in line for line in installs), installs
    assert "torch==$(TORCH)" in installs[0] and "sed -n 's/^torch==//p' $(LOCK)" in makefile
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)
