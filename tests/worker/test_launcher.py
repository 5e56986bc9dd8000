"""The per-GPU launcher: pinning and supervision, with real child processes."""
from __future__ import annotations

import os
import signal
import sys
import threading

from worker.launcher import Child, plan, run


def test_one_pinned_process_per_gpu_and_concurrency():
    children = plan(["0", "1"], ["colorize"], 2, preload=True, hostname="h")
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == ["0", "0", "1", "1"]
    assert len({c.slot for c in children}) == 4
    cmd = children[0].cmd
    assert cmd[1:3] == ["-m", "worker.process"] and "--preload" in cmd and cmd[cmd.index("--queues") + 1] == "colorize"
    cpu = plan([], ["colorize"], 1, preload=False, hostname="h")
    assert len(cpu) == 1 and cpu[0].env["CUDA_VISIBLE_DEVICES"] == "" and "--preload" not in cpu[0].cmd


def test_processes_on_one_host_split_its_cores(monkeypatch):
    from worker import launcher

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launcher, "usable_cores", lambda: 8)
    two = plan([], ["colorize"], 2, preload=False, hostname="h")
    assert [(c.env["OMP_NUM_THREADS"], c.env["MKL_NUM_THREADS"]) for c in two] == [("4", "4"), ("4", "4")]
    assert {c.env["OMP_NUM_THREADS"] for c in plan(["0", "1"], ["colorize"], 2, False, "h")} == {"2"}
    assert plan([], ["colorize"], 16, False, "h")[0].env["OMP_NUM_THREADS"] == "1"  # never zero
    assert {c.env["OMP_NUM_THREADS"] for c in plan([], ["colorize"], 2, False, "h", threads=3)} == {"3"}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the operator's own setting wins over the split
    assert plan([], ["colorize"], 2, False, "h")[0].env["OMP_NUM_THREADS"] == "1"
    assert plan([], ["colorize"], 2, False, "h", threads=2)[0].env["OMP_NUM_THREADS"] == "2"


def test_dead_children_are_restarted_and_sigterm_stops_all(tmp_path):
    marker = tmp_path / "starts"
    script = f"open({str(marker)!r}, 'a').write('x'); import time; time.sleep(0.3)"  # exits after 0.3 s
    child = Child("cpu-0", None, [sys.executable, "-c", script], dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert run([child], max_backoff_s=0.5) == 0
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
    assert len(marker.read_text()) >= 2  # it died and came back
    assert child.proc.poll() is not None


def test_gpus_all_finds_every_device_node(tmp_path, monkeypatch):
    from worker import launcher

    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)  # no nvidia-smi: the device nodes decide
    for n in (1, 4):
        dev = tmp_path / f"dev{n}"
        dev.mkdir()
        for name in [f"nvidia{i}" for i in range(n)] + ["nvidiactl", "nvidia-uvm", "nvidia-modeset"]:
            (dev / name).touch()
        gpus = launcher.expand_gpus("all", str(dev))
        assert gpus == [str(i) for i in range(n)]
        assert [c.env["CUDA_VISIBLE_DEVICES"] for c in plan(gpus, ["colorize"], 1, True, "h")] == gpus
    assert launcher.expand_gpus("all", str(tmp_path / "none")) == []  # no GPU: one CPU process
    assert launcher.expand_gpus(" 0, 2 ") == ["0", "2"]
