"""The worker image's dependency set, tested here: a fresh virtualenv built with exactly the
worker target's install commands (from the Dockerfile, against requirements/lock.txt; the CPU
wheel of the locked torch where the image gets PyPI's CUDA build), then one tiny job of every
kind in it (tests/deploy/every_kind.py, in process, the installed package only).

Slow (torch unpacks into a new environment: about two minutes on two cores)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import venv

import pytest

from tests.deploy.test_compose_and_dockerfile import DOCKERFILE, ROOT, parse_dockerfile, stage_chain
from tests.deploy.test_lock import LOCK_PATH, pip_installs


def worker_install_script(text: str, lock: str, wheels: str, pip: str) -> str:
    """The worker target's pip installs as one shell script, paths mapped to this machine; a
    torch the base image ships is installed first, as the image has it."""
    stages = parse_dockerfile(text)
    chain, _ = stage_chain(stages, "worker")
    own = [(op, a) for s in reversed(chain) for op, a in s.instructions]
    dests = [a.split()[-1] for op, a in own if op == "COPY" and LOCK_PATH in a.split()[:-1]]
    steps = [f"{pip} install torch=={m.group(1)}" for s in chain
             if (m := re.search(r"torch\S*?:(\d+\.\d+\.\d+)", s.image))]
    for op, arg in own:
        if op == "RUN":
            for seg in pip_installs(arg):
                seg = re.sub(r"^(\S*/)?pip3? install", f"{pip} install", seg)
                if dests:
                    seg = seg.replace(dests[-1], lock)
                steps.append(seg.replace("/wheels", wheels))
    return "set -e\n" + "\n".join(steps) + "\n"


def test_script_maps_the_worker_installs():
    script = worker_install_script(DOCKERFILE.read_text(), "/l/lock.txt", "/w", "/v/bin/pip")
    assert "/v/bin/pip install -c /l/lock.txt \"torch==$(sed -n 's/^torch==//p' /l/lock.txt)\"" in script
    assert '/v/bin/pip install -c /l/lock.txt "$(ls /w/*.whl)[ml]"' in script


# its own subprocess timeouts bound it; the suite-wide 300 s is too short on a loaded machine
@pytest.mark.timeout(1800)
def test_a_fresh_env_from_the_worker_install_runs_every_kind(tmp_path):
    env_dir, wheels = tmp_path / "env", tmp_path / "wheels"
    venv.create(env_dir, with_pip=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=300)
    script = worker_install_script(DOCKERFILE.read_text(), str(ROOT / LOCK_PATH), str(wheels),
                                   str(env_dir / "bin" / "pip"))
    # no byte-compiling of the installed files: the same packages, minutes less on two cores
    done = subprocess.run(["bash", "-c", script + "\n" + f"{env_dir}/bin/pip install -q pip >/dev/null"],
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "PIP_NO_COMPILE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    versions = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                               "import torch, transformers, diffusers; print(torch.__version__.split('+')[0], "
                               "transformers.__version__, diffusers.__version__)"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    from tests.deploy.test_lock import LOCK

    locked = LOCK.read()
    assert versions.stdout.split() == [locked["torch"], locked["transformers"], locked["diffusers"]], versions.stderr
    # the installed package, not this checkout: run from elsewhere, isolated from the repo
    run = subprocess.run([str(env_dir / "bin" / "python"), "-I", str(ROOT / "tests" / "deploy" / "every_kind.py")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
