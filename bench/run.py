"""The benchmark harness: every benchmark in one run, one table, one JSON file.

    python bench/run.py                    # everything (minutes on a 2-core CPU; the total is printed)
    python bench/run.py --quick            # smaller sets / fewer repeats, same per-job settings
    python bench/run.py --only service,anomaly
    python bench/run.py --list

Benchmarks (each in its own subprocess, in this order; see each module's docstring):
    service   bench/service.py   service overhead around a tiny colorization job, status reads,
                                 submissions/s, queue-to-start, cold vs warm worker (CPU, Redis db 12)
    cpu_workers bench/cpu_workers.py  jobs/s of 1 vs 2 CPU worker processes on one host (core split)
    colorize  bench/colorize.py  Control Color seconds/image and passes/image, SAG on/off, batch 1/4
    anomaly   bench/anomaly.py   PatchCore through the API: image / pixel AUROC per defect type;
                                 fit time and scoring images/s, tiny and wide_resnet50_2;
                                 PatchCore beside Reverse Distillation on one folder split
    video     bench/video.py     DiTCtrl clip vs 2 prompts; Tune-A-Video tuning / inversion / sampling
    subject   bench/subject.py   BLIP-Diffusion s/image; DreamBooth-LoRA 400-step tuning, s/image,
                                 class images; peak memory; DreamBench metrics (tiny)

The CPU rows always run (tiny profiles). When CUDA is available the GPU rows run too
(full-size architectures with random weights: SD-1.5 UNet + ControlNet, CogVideoX-2B, SD-1.5
for Tune-A-Video, WideResNet-50-2, BLIP-Diffusion and SD-1.5 + LoRA for subjects); --no-gpu skips them.

Output: the table on stdout, and bench/results/run_<cpu|cuda>[_quick].json (or --out) with the
machine (CPU model, cores, RAM, load average, GPU), versions (Python, torch, diffusers, the
package, ...), the git commit, the settings of the run and of every benchmark, every figure,
and the raw details; the table also goes to the same name with .txt. A benchmark that fails is
reported in the table and the JSON (exit status 1), and the others still run. Nothing here
asserts a time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, BenchOptions, format_table, row  # noqa: E402

# name -> "module:function" taking BenchOptions and returning {"settings", "rows", "details"}
BENCHMARKS = {
    "service": "bench.service:collect",
    "batching": "bench.batching:collect",
    "cpu_workers": "bench.cpu_workers:collect",
    "colorize": "bench.colorize:collect",
    "anomaly": "bench.anomaly:collect",
    "video": "bench.video:collect",
    "subject": "bench.subject:collect",
}
# runnable with --only, never part of the default run
EXTRA = {
    "selftest": "bench.run:selftest",
}
DEFAULT_TIMEOUT_S = 3600


def selftest(opts: BenchOptions) -> dict:
    """A trivial benchmark for the harness's own plumbing (no torch, a fraction of a second)."""
    n = 20_000 if opts.quick else 200_000
    t = time.perf_counter()
    total = sum(i * i for i in range(n))
    secs = time.perf_counter() - t
    return {"settings": {"n": n, **opts.to_dict()},
            "rows": [row("python loop", "sum of squares", n / secs / 1e6, "M iter/s", f"n={n}"),
                     row("python loop", "iterations", n, "")],
            "details": {"seconds": secs, "checksum": total}}


# ------------------------------------------------------------------ facts about the run

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_facts() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), None) or platform.processor() or platform.machine()
    mem = {line.split(":")[0]: int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
           if line.split(":")[0] in ("MemTotal", "MemAvailable")}
    facts = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(mem["MemTotal"] / 2**20, 2) if "MemTotal" in mem else None,
        "ram_available_gib": round(mem["MemAvailable"] / 2**20, 2) if "MemAvailable" in mem else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "gpu": gpu_facts(),
    }
    return facts


def gpu_facts() -> list[dict]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 2),
                    "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    try:
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        for g, d in zip(out, drv):
            g["driver"] = d
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "python_implementation": platform.python_implementation()}
    for dist in ("visionjobs", "torch", "diffusers", "transformers", "numpy", "pillow", "fastapi", "uvicorn",
                 "celery", "redis", "httpx", "safetensors", "opencv-python-headless", "av", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import redis

        out["redis_server"] = redis.Redis(socket_connect_timeout=1, socket_timeout=2).info("server")["redis_version"]
    except Exception:
        out["redis_server"] = None
    try:
        res = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        out["wrk"] = (res.stdout or res.stderr).splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        out["wrk"] = None
    return out


def git_facts() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain")) if commit else None}


# ------------------------------------------------------------------ running one benchmark

def _unwind(signum, frame):
    """SIGTERM (the parent's timeout) unwinds through `finally`: benchmarks stop their processes."""
    raise KeyboardInterrupt(f"signal {signum}")


def _child(target: str, out: Path, opts: BenchOptions) -> int:
    """Child mode: run one benchmark function and write its result as JSON."""
    signal.signal(signal.SIGTERM, _unwind)
    module, _, func = target.partition(":")
    result = getattr(importlib.import_module(module), func)(opts)
    out.write_text(json.dumps(result, default=str))
    return 0


def run_benchmark(name: str, target: str, opts: BenchOptions, log: Path, timeout_s: float, verbose: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"vj-bench-{name}-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", target, "--child-out", str(out)]
        cmd += ["--quick"] if opts.quick else []
        cmd += [] if opts.gpu else ["--no-gpu"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        t0 = time.perf_counter()
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

            def pump():
                for line in proc.stdout:
                    logf.write(line)
                    logf.flush()
                    if verbose:
                        sys.stdout.write("    " + line.decode(errors="replace"))
                        sys.stdout.flush()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = None
            reader.join(timeout=10)
        seconds = time.perf_counter() - t0
        if code == 0 and out.exists():
            res = json.loads(out.read_text())
            return {"status": "ok", "seconds": seconds, **res}
    tail = log.read_text(errors="replace").strip().splitlines()[-25:]
    reason = f"timed out after {timeout_s:g} s" if code is None else f"exit status {code}"
    return {"status": "error", "seconds": seconds, "error": reason, "log_tail": tail, "settings": {},
            "rows": [row("error", "benchmark failed", None, "", f"{reason}; log: {log}")], "details": {}}


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None, *, benchmarks: dict[str, str] | None = None) -> int:
    registry = dict(BENCHMARKS if benchmarks is None else benchmarks)
    known = {**registry, **EXTRA}
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sets and fewer repeats (same per-job settings)")
    ap.add_argument("--only", default=None, help=f"comma-separated names: {', '.join(known)}")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU rows even when CUDA is available")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/run_<cpu|cuda>[_quick].json)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per benchmark")
    ap.add_argument("--verbose", "-v", action="store_true", help="stream each benchmark's own output")
    ap.add_argument("--log-dir", default=None, help="where each benchmark's output goes (default: a temporary "
                                                      "folder, removed when every benchmark succeeded)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    opts = BenchOptions(quick=args.quick, gpu=not args.no_gpu)
    if args.child:
        return _child(args.child, Path(args.child_out), opts)
    if args.list:
        for name, target in known.items():
            print(f"{name:10s} {target}{'' if name in registry else '  (only with --only)'}")
        return 0
    names = list(registry)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            ap.error(f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")

    started = _dt.datetime.now(_dt.timezone.utc)
    machine, vers, git = machine_facts(), versions(), git_facts()
    gpu_rows = opts.gpu and bool(machine["gpu"])
    print(f"visionjobs benchmarks ({'quick' if opts.quick else 'full sets'}; "
          f"{'CPU + GPU ' + machine['gpu'][0]['name'] if gpu_rows else 'CPU only'}): {', '.join(names)}")
    print(f"{machine['cpu_model']}, {machine['usable_cores']} cores, {machine['ram_gib']} GiB RAM, "
          f"load {' '.join(f'{x:.2f}' for x in machine['load_average'] or [])}; "
          f"python {vers['python']}, torch {vers['torch']}, diffusers {vers['diffusers']}", flush=True)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="vj-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", end="\n" if args.verbose else " ", flush=True)
        res = run_benchmark(name, known[name], opts, log_dir / f"{name}.log", args.timeout, args.verbose)
        if res["status"] != "ok":
            res["log"] = str(log_dir / f"{name}.log")
        results[name] = res
        print(f"{res['status']} in {res['seconds']:.1f} s" + (f" ({res['error']})" if res["status"] != "ok" else ""),
              flush=True)
        if res["status"] != "ok":
            print("    " + "\n    ".join(res["log_tail"]), flush=True)
    total = time.perf_counter() - t_all
    if not args.log_dir and all(r["status"] == "ok" for r in results.values()):
        shutil.rmtree(log_dir, ignore_errors=True)  # kept (and named in the JSON) when one failed

    table = format_table({name: res["rows"] for name, res in results.items()})
    print()
    print(table)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "created": started.isoformat(timespec="seconds"),
        "command": ["bench/run.py", *(sys.argv[1:] if argv is None else argv)],
        "machine": machine, "versions": vers, "git": git,
        "settings": {"quick": opts.quick, "gpu": opts.gpu, "gpu_rows": gpu_rows, "only": names,
                     "timeout_s": args.timeout, "total_seconds": total},
        "benchmarks": results,
        "table": table,
    }
    out = Path(args.out) if args.out else RESULTS / f"run_{'cuda' if gpu_rows else 'cpu'}{'_quick' if opts.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".txt").write_text(
        f"# {report['created']}  {' '.join(report['command'])}\n"
        f"# {machine['cpu_model']}, {machine['usable_cores']} cores, {machine['ram_gib']} GiB RAM"
        f"{', GPU ' + machine['gpu'][0]['name'] if machine['gpu'] else ', no GPU'}; "
        f"python {vers['python']}, torch {vers['torch']}, diffusers {vers['diffusers']}, "
        f"visionjobs {vers['visionjobs']} ({(git['commit'] or '?')[:10]}{'+dirty' if git['dirty'] else ''})\n"
        + table + "\n")
    print(f"\n{len(names)} benchmark(s) in {total:.0f} s; wrote {out} and {out.with_suffix('.txt').name}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
