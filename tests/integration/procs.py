"""Real service processes for integration tests: started with their own env, logs to files,
always stopped (process group) at teardown."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

VISIONJOBS = [sys.executable, "-m", "visionjobs.cli"]


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONJOBS_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    env["VISIONJOBS_REFUSE_UNSERVED"] = "false"  # tests submit before their workers report (see tests/conftest.py)
    env.update(overrides)
    return env


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
        self.log_path = log
        self._log = open(log, "wb")
        self.p = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
                self.p.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=10)
        self._log.close()


def wait_http(url: str, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"process exited with {proc.p.returncode}:\n{proc.log()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{proc.log()[-3000:]}")


def wait_for_log(proc: Proc, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log():
            return
        if proc.p.poll() is not None:
            raise RuntimeError(f"process exited with {proc.p.returncode}:\n{proc.log()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in the log after {timeout} s:\n{proc.log()[-3000:]}")
