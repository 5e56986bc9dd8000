"""How many GPUs one Redis can feed: the real job-store scripts and the real Celery broker driven
by many simulated workers (processes, no models) against a private redis-server (127.0.0.1, AOF
everysec as deployed), in compressed time.

Each simulated job makes exactly the Redis calls a real one makes, without the GPU time between
them:
  submit (producer processes, as the API): capabilities read, active-jobs count, CREATE + read,
    the Celery message (send_task), the dispatched mark, and one client status read;
  run (worker processes, as worker/runner.py + worker/control.py): the broker delivery (kombu,
    prefetch 1, acks late: what the Celery worker's consumer does), CLAIM + read, the forced
    first progress, then for a job of D seconds at STEPS_PER_S steps a second: a progress
    HEARTBEAT every progress_interval_s and a cancel check (HMGET) at every other step, a lease
    HEARTBEAT every lease_s/3, then FINISH + read and the message ack.

Per duration D it prints jobs/s sustained here, Redis CPU per job (INFO cpu: used_cpu_sys +
used_cpu_user deltas over the window, all of the server's threads) and commands per job, and
from those the GPUs one Redis core can feed: a GPU asks 1/D jobs a second, so D / (CPU seconds
per job). Redis runs commands on one thread: that core is the ceiling whatever the host has.
Bounded: about `seconds` per duration plus start-up (< 60 s in all by default).

    python -m bench.store_capacity [--quick] [--workers 8] [--producers 2] [--seconds 8]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchOptions, row  # noqa: E402

DURATIONS = (1.0, 10.0, 60.0)
STEPS_PER_S = 20.0        # a diffusion step rate of a GPU (SD-1.5 at 512 px on a datacentre GPU: 20-30 it/s)
PROGRESS_INTERVAL_S = 0.25  # the default VISIONJOBS_PROGRESS_INTERVAL_S
LEASE_S = 30.0              # the default VISIONJOBS_LEASE_S: a lease HEARTBEAT every 10 s
MAX_QUEUED = 200            # producers pause above this depth (a steady queue, not a growing one)
KIND = "colorize"


# ------------------------------------------------------------------ Redis

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        self.client = redis.Redis(port=self.port, decode_responses=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def usage(self) -> tuple[float, int]:
        cpu, stats = self.client.info("cpu"), self.client.info("stats")
        return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), int(stats["total_commands_processed"])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


# ------------------------------------------------------------------ simulated processes

def _store(url: str):
    from service.store.redis_store import RedisJobStore

    return RedisJobStore(url)


def producer(url: str, stop, submitted) -> None:
    """The API's submission path (sync driver; the async one sends the same commands)."""
    from service.dispatch import CeleryDispatcher
    from service.store.base import JobRecord, new_id

    store, dispatcher = _store(url), CeleryDispatcher(url, 3600)
    params = {"image": "upl_bench", "seed": 1, "steps": 20, "sag_scale": 0}
    n = 0
    while not stop.is_set():
        if n % 20 == 0 and store.queue_depth(KIND) > MAX_QUEUED:
            time.sleep(0.01)
            continue
        store.get_capabilities(KIND)
        store.active_jobs("bench")
        job, _ = store.create_job(JobRecord(id=new_id("job"), tenant="bench", kind=KIND, params=params,
                                            max_attempts=3))
        dispatcher.dispatch(job.id, KIND)
        store.mark_dispatched(job.id, 300)
        store.get_job(job.id)  # the client's status read
        n += 1
        with submitted.get_lock():
            submitted.value += 1


def run_job(store, job_id: str, name: str, duration_s: float) -> bool:
    claim = store.claim(job_id, name, LEASE_S)
    if claim.job is None:
        return False
    attempt = claim.job.attempt
    store.heartbeat(job_id, attempt, LEASE_S, progress=0.0, stage="loading model")
    steps = int(duration_s * STEPS_PER_S)
    last_write = next_beat = 0.0
    for i in range(1, steps + 1):
        t = i / STEPS_PER_S  # virtual time: the GPU work between the calls is skipped
        if t - last_write >= PROGRESS_INTERVAL_S:
            last_write = t
            store.heartbeat(job_id, attempt, LEASE_S, progress=i / steps, stage=f"denoising {i}/{steps}")
        else:
            store.should_stop(job_id, attempt)
        if t >= next_beat + LEASE_S / 3:  # the lease thread's renewal
            next_beat = t
            store.heartbeat(job_id, attempt, LEASE_S)
    store.finish(job_id, attempt, "succeeded", result={"images": [{"key": f"jobs/{job_id}/output_0.png"}]},
                 model_profile="pretrained")
    return True


def worker(url: str, index: int, duration_s: float, stop, finished) -> None:
    """One GPU worker process: Celery's broker consumer (kombu, prefetch 1, late ack) and the runner's calls."""
    from celery import Celery
    from kombu import Exchange, Queue

    from service.dispatch import celery_base_config

    store = _store(url)
    app = Celery("bench-worker")
    app.conf.update(celery_base_config(url, 3600))
    name = f"bench-{index}:{os.getpid()}"

    def on_message(body, message):
        if run_job(store, body[0][0], name, duration_s):
            with finished.get_lock():
                finished.value += 1
        message.ack()

    with app.connection_for_read() as conn:
        with conn.Consumer(Queue(KIND, Exchange(KIND), routing_key=KIND), callbacks=[on_message],
                           accept=["json"], prefetch_count=1):
            while not stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except (socket.timeout, TimeoutError):
                    pass


# ------------------------------------------------------------------ one duration

def measure(redis: PrivateRedis, duration_s: float, workers: int, producers: int, seconds: float,
            max_warmup_s: float = 15.0) -> dict:
    ctx = mp.get_context("fork")
    stop, submitted, finished = ctx.Event(), ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=producer, args=(redis.url, stop, submitted), daemon=True) for _ in range(producers)]
    procs += [ctx.Process(target=worker, args=(redis.url, i, duration_s, stop, finished), daemon=True)
              for i in range(workers)]
    for p in procs:
        p.start()
    try:
        # processes import and connect (seconds on a small host): measure once every worker ran a job
        deadline = time.monotonic() + max_warmup_s
        while finished.value < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        redis.client.config_resetstat()
        cpu0, cmds0, done0, t0 = *redis.usage(), finished.value, time.monotonic()
        time.sleep(seconds)
        cpu1, cmds1, done1, t1 = *redis.usage(), finished.value, time.monotonic()
        by_command = top_commands(redis.client.info("commandstats"))
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    jobs, wall, cpu = done1 - done0, t1 - t0, cpu1 - cpu0
    per_job = cpu / jobs if jobs else None
    return {"duration_s": duration_s, "jobs": jobs, "wall_s": wall, "jobs_per_s": jobs / wall,
            "redis_cpu_s": cpu, "redis_busy": cpu / wall, "redis_cpu_ms_per_job": per_job * 1000 if per_job else None,
            "commands_per_job": (cmds1 - cmds0) / jobs if jobs else None,
            "redis_bound_jobs_per_s": 1 / per_job if per_job else None,
            "gpus_per_redis": duration_s / per_job if per_job else None, "redis_time_by_command": by_command}


def top_commands(stats: dict, n: int = 6) -> dict[str, float]:
    """Share of Redis's command time per command (EVALSHA: the job-store scripts, whose inner
    calls are counted under their own names too; the rest is direct calls and the broker's)."""
    usec = {name.removeprefix("cmdstat_"): float(v["usec"]) for name, v in stats.items()}
    direct = sum(v for k, v in usec.items() if k != "evalsha") or 1.0
    top = sorted(usec.items(), key=lambda kv: -kv[1])[:n]
    return {k: round(v / direct, 3) for k, v in top}


def collect(opts: BenchOptions, *, workers: int = 8, producers: int = 2, seconds: float | None = None,
            durations=DURATIONS) -> dict:
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server not found")
    seconds = seconds if seconds is not None else (1.5 if opts.quick else 6.0)
    with tempfile.TemporaryDirectory(prefix="store-capacity-") as tmp:
        redis = PrivateRedis(Path(tmp))
        try:
            results = []
            for d in durations:
                redis.client.flushall()
                results.append(measure(redis, d, workers, producers, seconds))
        finally:
            redis.stop()
    rows = []
    for r in results:
        case = f"{r['duration_s']:g} s jobs"
        rows += [row(case, "jobs/s sustained here", r["jobs_per_s"], "jobs/s",
                     f"{workers} workers, {producers} producers, Redis {r['redis_busy']:.0%} of a core"),
                 row(case, "Redis CPU per job", r["redis_cpu_ms_per_job"], "ms"),
                 row(case, "Redis commands per job", r["commands_per_job"], "", "Lua-internal calls included"),
                 row(case, "jobs/s one Redis core sustains", r["redis_bound_jobs_per_s"], "jobs/s"),
                 row(case, "GPUs one Redis can feed", r["gpus_per_redis"], "GPUs",
                     f"{STEPS_PER_S:g} steps/s, progress every {PROGRESS_INTERVAL_S:g} s"),
                 row(case, "Redis time by command", None, "",
                     ", ".join(f"{k} {v:.0%}" for k, v in r["redis_time_by_command"].items()))]
    return {"settings": {"workers": workers, "producers": producers, "seconds": seconds,
                         "steps_per_s": STEPS_PER_S, "progress_interval_s": PROGRESS_INTERVAL_S, "lease_s": LEASE_S,
                         "aof": "everysec", **opts.to_dict()},
            "rows": rows, "details": {"results": results}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_capacity")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=None, help="measured window per duration")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = collect(BenchOptions(quick=args.quick, gpu=False), workers=args.workers, producers=args.producers,
                     seconds=args.seconds)
    from bench.common import format_table

    print(format_table({"store_capacity": report["rows"]}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
