"""The `visionjobs` command's guard rails."""
from __future__ import annotations

import subprocess

from tests.conftest import free_port
from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_http


def test_api_refuses_to_start_without_keys(tmp_path):
    done = subprocess.run([*VISIONJOBS, "api", "--port", str(free_port())], capture_output=True, text=True,
                          env=clean_env(VISIONJOBS_DATA_DIR=str(tmp_path)), timeout=60)
    assert done.returncode != 0 and "VISIONJOBS_API_KEYS" in done.stderr and "--allow-anonymous" in done.stderr


def test_api_starts_anonymous_only_when_told(tmp_path):
    port = free_port()
    proc = Proc([*VISIONJOBS, "api", "--port", str(port), "--allow-anonymous"],
                clean_env(VISIONJOBS_DATA_DIR=str(tmp_path)), tmp_path / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        assert "anonymous tenant" in proc.log()
    finally:
        proc.stop()


def test_worker_rejects_unknown_queues():
    done = subprocess.run([*VISIONJOBS, "worker", "--queues", "colorize,bogus"], capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert done.returncode != 0 and "bogus" in done.stderr

