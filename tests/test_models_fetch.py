"""`visionjobs models fetch` without a network: a clear error naming what could not be fetched."""
from __future__ import annotations

import os
import subprocess
import sys


def test_fetch_offline_names_every_missing_item(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VISIONJOBS_MODEL_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "visionjobs.cli", "models", "fetch", "--kind", "colorize"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "zhexinliang/Control-Color" in done.stderr and "openai/clip-vit-large-patch14" in done.stderr
    assert "Traceback" not in done.stderr


def test_fetch_refuses_unknown_kinds(tmp_path):
    done = subprocess.run([sys.executable, "-m", "visionjobs.cli", "models", "fetch", "--kind", "nope",
                           "--model-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown kind" in done.stderr
