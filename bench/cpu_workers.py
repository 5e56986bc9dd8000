"""CPU worker processes on one host: jobs/s for 1 vs 2 processes (issue 15).

    python bench/cpu_workers.py            # 16 jobs per run, 2 rounds
    python bench/cpu_workers.py --quick    # 8 jobs per run, 1 round

`visionjobs worker --queues colorize --concurrency N --preload` against a real `visionjobs api`
(Redis database 12, local object store, tiny profile). Each run submits M tiny colorize jobs
at once (64 px, 8 steps, SAG on) and times the first submission to the last final state.
Configurations, alternating round by round:

    1 process                       the launcher gives it all the host's cores
    2 processes, cores split        the launcher's default: cores // 2 threads each
    2 processes, no split           --threads <cores>: each process uses every core (the old launcher)

OMP_NUM_THREADS is removed from the workers' environment so the launcher decides. Figures are
printed, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchOptions, print_and_save, row, summary  # noqa: E402


def run_jobs(cluster, png: bytes, m: int) -> tuple[float, int]:
    """Submit m jobs at once; seconds from the first submission to the last final state."""
    import httpx

    from bench.service import PARAMS, wait_longpoll

    with httpx.Client(base_url=cluster.base, headers=cluster.headers, timeout=120) as client:
        upload = client.post("/v1/uploads", files={"file": ("photo.png", png, "image/png")}).json()["id"]
        t = time.perf_counter()
        ids = [client.post("/v1/colorizations", json={"image": upload, **PARAMS}).json()["id"] for _ in range(m)]
        jobs = [wait_longpoll(client, job_id) for job_id in ids]
    return time.perf_counter() - t, sum(j["status"] == "succeeded" for j in jobs)


def start_workers(cluster, processes: int, threads: int | None) -> object:
    from tests.integration.procs import VISIONJOBS, Proc

    env = {k: v for k, v in cluster.env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [*VISIONJOBS, "worker", "--queues", "colorize", "--concurrency", str(processes), "--preload"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = Proc(cmd, env, cluster.tmp / f"workers_{processes}_{threads or 'auto'}_{time.monotonic_ns()}.log")
    deadline = time.monotonic() + 300
    while proc.log().count(" ready.") < processes:
        if proc.p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start:\n{proc.log()[-3000:]}")
        time.sleep(0.1)
    return proc


def collect(opts: BenchOptions | None = None, *, m: int | None = None, rounds: int | None = None) -> dict:
    import shutil
    import tempfile

    from bench.service import Cluster, _photo_png
    from worker.launcher import usable_cores

    opts = opts or BenchOptions()
    m = m or (8 if opts.quick else 16)
    rounds = rounds or (1 if opts.quick else 2)
    cores = usable_cores()
    configs = [("1 process", 1, None), ("2 processes, cores split", 2, None), ("2 processes, no split", 2, cores)]
    png = _photo_png()
    tmp = Path(tempfile.mkdtemp(prefix="vj-bench-cpu-workers-"))
    cluster = Cluster(tmp)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    try:
        cluster.start_api()
        for _ in range(rounds):
            for name, processes, threads in configs:
                print(f"{name}: {m} jobs ...", flush=True)
                workers = start_workers(cluster, processes, threads)
                try:
                    seconds, ok = run_jobs(cluster, png, m)
                finally:
                    workers.stop()
                runs[name].append({"seconds": seconds, "succeeded": ok, "jobs_per_s": m / seconds})
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    case = f"CPU workers on one {cores}-core host, {m} tiny colorize jobs at once"
    rows, rate = [], {}
    for name, processes, threads in configs:
        rate[name] = summary([r["jobs_per_s"] for r in runs[name]])["p50"]
        per = "all cores" if processes == 1 else f"{threads or max(1, cores // processes)} thread(s) each"
        rows.append(row(case, f"{name}: jobs/s", rate[name], "jobs/s",
                        f"{per}; {rounds} round(s); {sum(r['succeeded'] for r in runs[name])}/{m * rounds} succeeded"))
    rows += [row(case, "2 processes split / 1 process", rate["2 processes, cores split"] / rate["1 process"], "x"),
             row(case, "2 processes split / 2 no split", rate["2 processes, cores split"] / rate["2 processes, no split"],
                 "x", "what the split buys over every process using every core")]
    return {"settings": {"jobs": m, "rounds": rounds, "cores": cores, "configs": configs, **opts.to_dict()},
            "rows": rows, "details": {"runs": runs}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-m", type=int, default=None, help="jobs per run")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res = collect(BenchOptions(quick=args.quick), m=args.m, rounds=args.rounds)
    return print_and_save("cpu_workers", res, args.out, f"cpu_workers{'_quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
