"""The committed API contract and the README stay true to the code."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from service.app import create_app
from service.core.config import Settings
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]


def test_committed_openapi_matches_the_app():
    committed = json.loads((ROOT / "openapi/openapi.json").read_text())
    assert committed == json.loads(json.dumps(create_app().openapi())), \
        "openapi/openapi.json drifted: run `visionjobs openapi --out openapi/openapi.json` (or `make openapi`)"


def test_openapi_documents_the_contract():
    spec = create_app().openapi()
    job = spec["components"]["schemas"]["Job"]["properties"]
    assert set(job) == {"id", "kind", "status", "progress", "stage", "queue_position", "attempt", "created_at",
                        "started_at", "finished_at", "params", "error", "result", "model_profile", "webhook",
                        "weights_fingerprint", "metrics"}
    assert "multipart/form-data" in spec["paths"]["/v1/uploads"]["post"]["requestBody"]["content"]
    assert "202" in spec["paths"]["/v1/colorizations"]["post"]["responses"]


def test_readme_documents_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(VISIONJOBS_[A-Z0-9_]+)` \| ([^|]+) \|", readme, re.M))
    fields = {**Settings.model_fields, **WorkerSettings.model_fields}
    for name, field in fields.items():
        var = f"VISIONJOBS_{name.upper()}"
        assert var in rows, f"{var} missing from the README configuration table"
        shown = rows[var].strip()
        expected = "(unset)" if field.default is None else ('""' if field.default == "" else f"`{field.default}`")
        assert shown == expected, f"{var}: README says {shown}, code says {expected}"
    # and nothing in the code reads a VISIONJOBS_ variable the settings do not declare
    used = set()
    for path in list(ROOT.glob("service/**/*.py")) + list(ROOT.glob("worker/**/*.py")) + \
            list(ROOT.glob("models/**/*.py")) + list(ROOT.glob("visionjobs/**/*.py")):
        used |= set(re.findall(r"VISIONJOBS_[A-Z0-9_]+", path.read_text()))
    declared = {f"VISIONJOBS_{n.upper()}" for n in fields}
    assert used - declared == set()


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Set-up commands", 1)[1].split("##", 1)[0]
    commands = re.findall(r"\| `([^`]+)` \|$", table, re.M)
    assert commands == ["make run", "make test"]
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_api_process_never_imports_the_ml_stack():
    code = ("import sys, service.app, service.store.redis_store, service.storage.s3; "
            "app = service.app.create_app(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'worker', 'models')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_first_run_the_quick_start_sample_make_run_options_and_clean_packaging():
    import re
    import tomllib

    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    sample = re.search(r"file=@(\S+)", quick).group(1)
    with Image.open(root / sample) as img:  # the photo the quick start uploads is in the repository
        assert img.size == (256, 256) and (root / sample).stat().st_size < 64 * 1024
    assert "source .venv/bin/activate" in quick and "make run HOST=" in quick
    makefile = (root / "Makefile").read_text()
    assert re.search(r"^\t\$\(BIN\)/visionjobs run --host \$\(HOST\) --port \$\(PORT\)$", makefile, re.M)
    for path in ("pyproject.toml", "client/pyproject.toml"):  # a `license` table makes setuptools warn on every install
        meta = tomllib.loads((root / path).read_text())
        assert meta["project"]["license"] == "Apache-2.0", path
        assert meta["build-system"]["requires"] == ["setuptools>=77"], path
