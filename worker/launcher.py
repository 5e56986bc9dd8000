"""`visionjobs worker`: one child process per GPU (x concurrency), pinned with
CUDA_VISIBLE_DEVICES, restarted with backoff when one dies. The launcher never imports torch.

The children share the host's cores: each gets OMP_NUM_THREADS / MKL_NUM_THREADS (which torch
reads for its intra-op threads) of cores // children, so two CPU processes on two cores run one
thread each instead of two each fighting over both. `threads` sets it explicitly; without it, an
OMP_NUM_THREADS already in the environment is kept."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("visionjobs.launcher")


@dataclass
class Child:
    slot: str
    gpu: str | None
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = field(default=0.0)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env)
        self.started = time.monotonic()
        log.info("started worker %s (pid %d, CUDA_VISIBLE_DEVICES=%r, %s threads)", self.slot, self.proc.pid,
                 self.env["CUDA_VISIBLE_DEVICES"], self.env.get("OMP_NUM_THREADS", "all"))


def detect_gpus(dev: str = "/dev") -> list[str]:
    """CUDA device ids this container or host sees, for `--gpus all`, without touching CUDA
    (the launcher forks): `nvidia-smi -L` when it is there, else the /dev/nvidiaN device nodes
    (a container gets one per GPU it was given; CUDA numbers them 0..N-1 whatever N is)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
            count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
            if count:
                return [str(i) for i in range(count)]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        count = sum(1 for name in os.listdir(dev) if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        count = 0
    return [str(i) for i in range(count)]


def expand_gpus(spec: str, dev: str = "/dev") -> list[str]:
    """`"0,1"` -> ["0", "1"]; `"all"` -> every GPU detect_gpus finds (none: CPU processes)."""
    if spec.strip().lower() == "all":
        found = detect_gpus(dev)
        if not found:
            log.warning("--gpus all: no NVIDIA GPU visible; starting CPU processes")
        return found
    return [g.strip() for g in spec.split(",") if g.strip()]


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: cgroup cpusets, taskset), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_child(children: int, threads: int | None = None, cores: int | None = None) -> int:
    if threads:
        return threads
    return max(1, (cores or usable_cores()) // max(1, children))


def plan(gpus: list[str], queues: list[str], concurrency: int, preload: bool, hostname: str,
         threads: int | None = None) -> list[Child]:
    children = []
    n = len(gpus or [None]) * concurrency
    per_child = str(threads_per_child(n, threads))
    keep_env = threads is None and "OMP_NUM_THREADS" in os.environ
    for gpu in gpus or [None]:
        for i in range(concurrency):
            slot = f"{'gpu' + gpu if gpu is not None else 'cpu'}-{i}"
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu if gpu is not None else "")
            if not keep_env:
                env.update({var: per_child for var in THREAD_VARS})
            cmd = [sys.executable, "-m", "worker.process", "--queues", ",".join(queues),
                   "--name", f"{hostname}-{slot}"] + (["--preload"] if preload else [])
            children.append(Child(slot, gpu, cmd, env))
    return children


def run(children: list[Child], *, max_backoff_s: float = 30.0, stop_grace_s: float = 30.0) -> int:
    """Until SIGTERM/SIGINT, which is forwarded: each child drains (worker/drain.py) and the
    launcher waits `stop_grace_s` for them before killing what is left."""
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for c in children:
            if c.proc and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for c in children:
        c.start()
    while not stopping:
        time.sleep(0.5)
        for c in children:
            code = c.proc.poll()
            if code is None or stopping:
                continue
            # A crash loop backs off; a child that ran a while restarts at once.
            c.restarts = 0 if time.monotonic() - c.started > 60 else c.restarts + 1
            delay = min(max_backoff_s, 0.5 * 2 ** c.restarts) if c.restarts else 0
            log.warning("worker %s exited with %s; restarting in %.1f s", c.slot, code, delay)
            time.sleep(delay)
            c.start()
    deadline = time.monotonic() + stop_grace_s
    for c in children:
        try:
            c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
    return 0
