"""`visionjobs run` from nothing: no settings, no other server; the README's curl sequence
runs against it verbatim and yields a PNG of the input's size with the input's L channel."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.helpers import l_channel, photo
from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_http

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_curl_sequence() -> str:
    text = README.read_text()
    block = re.search(r"<!-- curl-sequence -->\s*```sh\n(.*?)```\s*<!-- /curl-sequence -->", text, re.S)
    assert block, "README lost its curl sequence"
    return block.group(1)


def test_readme_curl_sequence_against_embedded_run(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    proc = Proc([*VISIONJOBS, "run", "--port", str(port), "--data-dir", str(data)], clean_env(), tmp_path / "run.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        log = proc.log()
        assert "anonymous tenant" in log and "TINY" in log.upper()  # says so at start
        source = photo(123, 77)  # odd size: not a multiple of 64 on either side
        source.save(tmp_path / "photo.png")
        script = "set -euo pipefail\n" + readme_curl_sequence().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr + proc.log()[-2000:]
        lines = done.stdout.splitlines()
        assert lines[0] == "succeeded"
        assert any(line.startswith("event: job") for line in lines[1:])
        out = Image.open(tmp_path / "colorized.png")
        assert out.format == "PNG" and out.size == source.size
        assert np.abs(l_channel(out) - l_channel(source)).mean() <= 2.0
        assert (data / "jobs.sqlite3").exists()
    finally:
        proc.stop()
