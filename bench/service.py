"""Service overhead (issues 8, 15): what the service adds around a tiny colorization job, on the
CPU; status reads against a minimal anchor app; many waiters on one API process.

    python bench/service.py                          # everything: N = 60 jobs per completion mode
    python bench/service.py --quick                  # N = 50, shorter load runs, a smaller scale run
    python bench/service.py --parts reads,scale      # a subset of submissions,jobs,reads,scale

What runs (database 12 of the local Redis, flushed before and after):

(a) direct: ``models.profiles.load("colorize", "tiny")`` in this warm process, then the same call
    the worker makes (``pipe(image=..., num_inference_steps=8, guidance=cfg 7, sag_scale=0.05,
    sag_threshold=600, seed=1234)``, a 64x64 photo, 1 torch thread like the worker's
    OMP_NUM_THREADS=1), N times after two untimed warm-up calls. The direct calls are interleaved
    with the jobs of (b), one after every second job and never at the same time, so both sample
    the same load of a shared machine.
(b) full path: real ``visionjobs api`` and ``visionjobs worker --queues colorize`` processes
    (VISIONJOBS_REDIS_URL on database 12, the local object store with a signing secret, tiny
    profile, device cpu). Per job the client (one keep-alive httpx client) uploads the photo
    (POST /v1/uploads), submits (POST /v1/colorizations), and waits for the final state either
    with ``GET /v1/jobs/{id}?wait=30`` (long-poll) or by reading ``GET /v1/jobs/{id}/events``
    (SSE) until a final frame; the two modes alternate job by job, N each.

How the overhead is measured. ``e2e`` = client clock from the start of the upload to the moment
the final state is in hand. The worker's pipeline time comes from a timing probe
(bench/service_probe/sitecustomize.py, on the worker's PYTHONPATH only) that wraps the
pipeline call, Runner.execute and the per-step progress/cancel callback with timers and writes
one JSON line per job; it measures and changes nothing. ``overhead = e2e - worker pipeline
time``. The per-step callbacks (a store read per step, a throttled progress write) run inside
the pipeline call but are service work: shown separately, and added in "overhead incl.
callbacks". Breakdown per job (all processes on one host, one clock): upload; submit;
queue->start (job ``created_at`` -> ``started_at``, the claim); start->pipeline (read the
upload from storage, decode, warm-cache lookup, progress write); pipeline->final (PNG encode,
storage write, the final-state script: ``finished_at``); final->seen (the API wakes on the job's
event stream, renders, answers).

Also: submissions/s into the queue (POST /v1/colorizations with no worker running; the jobs are
then canceled and their broker messages dropped), GET /v1/jobs/{id} requests/s and latency
percentiles against the one API process (``wrk`` when it is on PATH, e.g. Debian's package,
and an async httpx generator with bounded concurrency and duration either way), queue-to-start
latency with an idle worker (from the N jobs), and cold vs warm start: a worker without
--preload (ready time, first job vs later ones), then one with --preload. The API runs with
its rate limit and active-job quota set out of reach (the limiter code still runs per request).

Status reads against the anchor (part `reads`): bench/anchor_app.py is the least a FastAPI app
can do for a status read (one redis.asyncio HGETALL of the job's hash, returned as JSON), served
by uvicorn with the options `visionjobs api` uses. wrk runs alternate anchor, service, anchor, ...
(c=16, 3 x 8 s each; --quick 2 x 4 s) on a succeeded job with one output image (its URL signed
on every read); printed: each side's requests/s, p50/p99 and CPU per request of the server
process, and the service's requests/s as a ratio of the anchor's (goal >= 0.7), plus the same
ratio by CPU time per request (steadier on a shared machine).

Scale run (part `scale`, bench/waiters.py): 10,000 long-polls and 2,000 SSE streams held on
one API process (--quick: 2,000 + 400) with the file-descriptor limit raised, a fake worker
reporting progress on 200 of their jobs; another tenant's paced status reads (200 req/s) meanwhile
must keep p99 < 100 ms with no 5xx; then 100 jobs finish and their waiters must answer; then the
clients hang up and every waiter must be released. Printed: latencies, status codes, API memory
and threads per waiter, wake-up latency.

Where the time of a request goes: around every load run, the CPU seconds of the API process
(/proc), of the Redis server (INFO cpu; shared, so any other client of it counts too) and of the
load generator are divided by the requests served ("CPU per request"); and the service's own
work for one status read (tenant lookup, job store read, rate limiter, rendering with URL
signing and pydantic JSON) is timed in this process with the API's settings against the same
Redis, next to one whole request over HTTP with one connection (the difference is uvicorn,
FastAPI routing and dependencies, the threadpool hop of a sync endpoint, and the client).
Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_REDIS_URL, ROOT, BenchOptions, print_and_save  # noqa: E402
from bench.service_job import PARAMS, SEED, SIZE, STEPS  # noqa: E402  (the job every part times)

PROBE_DIR = ROOT / "bench" / "service_probe"
FINAL = ("succeeded", "failed", "canceled")
QUEUE = "colorize"
BIG = str(10**9)


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _photo_png() -> bytes:
    from tests.helpers import photo, png_bytes

    return png_bytes(photo(SIZE, SIZE))


# ------------------------------------------------------------------ (a) direct pipeline

class Direct:
    """The pipeline called directly in this warm process, exactly as the worker calls it."""

    def __init__(self, png: bytes, device: str = "cpu", warmup: int = 2):
        import torch

        from models import profiles
        from models.media import load_image

        torch.set_num_threads(1)  # the worker runs with OMP_NUM_THREADS=1
        self.torch, self.device = torch, device
        self.pipe = profiles.load("colorize", "tiny", device=device)
        self.pipe.set_progress_bar_config(disable=True)
        self.image = load_image(png)
        for _ in range(warmup):
            self()

    def __call__(self) -> float:
        torch = self.torch
        t = time.perf_counter()
        self.pipe(image=self.image, prompt="", negative_prompt=None, num_inference_steps=STEPS,
                  guidance=PARAMS["guidance"], num_images=1, generator=torch.Generator("cpu").manual_seed(SEED),
                  strokes=None, stroke_image=None, exemplar=None, sag_scale=PARAMS["sag_scale"],
                  sag_threshold=PARAMS["sag_threshold"], deformable_decoder=False)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t


# ------------------------------------------------------------------ the processes

class Cluster:
    """`visionjobs api` + `visionjobs worker` on Redis database 12 and a local object store."""

    def __init__(self, tmp: Path, device: str = "cpu"):
        import redis

        from tests.conftest import free_port
        from tests.integration.procs import clean_env

        self.tmp = tmp
        self.redis = redis.Redis.from_url(BENCH_REDIS_URL)
        self.redis.flushdb()
        self.key = "bench-" + secrets.token_hex(16)
        self.reader_key = "reader-" + secrets.token_hex(16)  # another tenant (the scale run's reader)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.redis_url = BENCH_REDIS_URL
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.reader_headers = {"Authorization": f"Bearer {self.reader_key}"}
        self.probe_file = tmp / "probe.jsonl"
        self.env = clean_env(
            VISIONJOBS_REDIS_URL=BENCH_REDIS_URL, VISIONJOBS_API_KEYS=f"bench:{self.key},reader:{self.reader_key}",
            VISIONJOBS_DATA_DIR=str(tmp / "data"), VISIONJOBS_SIGNING_SECRET=secrets.token_hex(32),
            VISIONJOBS_MODEL_PROFILE="tiny", VISIONJOBS_DEVICE=device,
            VISIONJOBS_RATE_LIMIT_PER_MINUTE=BIG, VISIONJOBS_MAX_ACTIVE_JOBS=BIG, VISIONJOBS_MAX_WAITERS_PER_KEY=BIG)
        self.api = None
        self.worker = None
        self._n_workers = 0

    def start_api(self) -> float:
        from tests.integration.procs import VISIONJOBS, Proc, wait_http

        t = time.perf_counter()
        self.api = Proc([*VISIONJOBS, "api", "--port", str(self.port)], self.env, self.tmp / "api.log")
        wait_http(f"{self.base}/readyz", self.api)
        return time.perf_counter() - t

    def start_worker(self, preload: bool) -> float:
        """Start a worker; seconds until Celery logs `ready.` (after the preload, if any)."""
        from tests.integration.procs import VISIONJOBS, Proc

        env = dict(self.env, BENCH_PROBE_FILE=str(self.probe_file),
                   PYTHONPATH=os.pathsep.join([str(PROBE_DIR), str(ROOT), self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self._n_workers += 1
        log = self.tmp / f"worker{self._n_workers}.log"
        t = time.perf_counter()
        self.worker = Proc([*VISIONJOBS, "worker", "--queues", QUEUE] + (["--preload"] if preload else []), env, log)
        deadline = time.monotonic() + 300
        while "ready." not in self.worker.log():
            if self.worker.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.worker.log()[-3000:]}")
            time.sleep(0.02)
        return time.perf_counter() - t

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def probe(self, job_id: str, timeout: float = 10.0) -> dict | None:
        """The worker-side record of a job (written just after its final state)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe_file.exists():
                for line in self.probe_file.read_text().splitlines():
                    rec = json.loads(line)
                    if rec["job"] == job_id and rec.get("status") != "canceled":
                        return rec
            time.sleep(0.01)
        return None

    def close(self) -> None:
        self.stop_worker()
        if self.api is not None:
            self.api.stop()
        self.redis.flushdb()
        self.redis.close()


# ------------------------------------------------------------------ one job through the whole path

def wait_longpoll(client, job_id: str) -> dict:
    while True:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] in FINAL:
            return job


def wait_sse(client, job_id: str) -> dict:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                job = json.loads(line[6:])
                if job.get("status") in FINAL:
                    return job
    raise RuntimeError(f"SSE stream of {job_id} ended without a final state")


def one_job(cluster: Cluster, client, png: bytes, mode: str, download: bool = True) -> dict:
    t0, p0 = time.time(), time.perf_counter()
    up = client.post("/v1/uploads", files={"file": ("photo.png", png, "image/png")})
    up.raise_for_status()
    t_up = time.time()
    sub = client.post("/v1/colorizations", json={"image": up.json()["id"], **PARAMS})
    sub.raise_for_status()
    t_sub = time.time()
    job_id = sub.json()["id"]
    job = wait_longpoll(client, job_id) if mode == "wait" else wait_sse(client, job_id)
    e2e = time.perf_counter() - p0
    t_seen = t0 + e2e
    rec = {"mode": mode, "job": job_id, "status": job["status"], "e2e_s": e2e, "upload_s": t_up - t0,
           "submit_s": t_sub - t_up}
    created, started, finished = _ts(job["created_at"]), _ts(job["started_at"]), _ts(job["finished_at"])
    if started and created:
        rec["queue_to_start_s"] = started - created
    if finished:
        rec["final_to_seen_s"] = t_seen - finished
    probe = cluster.probe(job_id)
    if probe and probe.get("pipeline_s") is not None:
        rec.update(pipeline_s=probe["pipeline_s"], callback_s=probe["callback_s"], callback_n=probe["callback_n"],
                   load_s=probe["load_s"], overhead_s=e2e - probe["pipeline_s"],
                   overhead_incl_callbacks_s=e2e - probe["pipeline_s"] + probe["callback_s"])
        if started:
            rec["start_to_pipeline_s"] = probe["pipe_t0"] - started
        if finished:
            rec["pipeline_to_final_s"] = finished - probe["pipe_t1"]
    if download and job["status"] == "succeeded":
        t = time.perf_counter()
        r = client.get(job["result"]["images"][0]["url"])
        rec["download_s"] = time.perf_counter() - t if r.status_code == 200 else None
    return rec


# the load generators live in bench/load.py, the status-read runs in bench/reads.py, the rows in
# bench/service_rows.py
from bench.load import httpx_load, with_cpu, wrk_load  # noqa: E402


def cancel_queued(cluster: Cluster, ids: list[str] | None = None) -> int:
    """Cancel the given (or all listed) queued jobs, then drop their broker messages."""
    import httpx

    with httpx.Client(base_url=cluster.base, headers=cluster.headers, timeout=30) as c:
        if ids is None:
            ids, cursor = [], None
            while True:
                page = c.get("/v1/jobs", params={"status": "queued", "limit": 100,
                                                 **({"cursor": cursor} if cursor else {})}).json()
                ids += [j["id"] for j in page["items"]]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    if ids:
        httpx_load_ids(cluster, ids)
    cluster.redis.delete(QUEUE)  # kombu's Redis transport keeps a queue's messages in a list of its name
    left = sum(cluster.redis.llen(k) for k in cluster.redis.scan_iter(match=f"{QUEUE}*")
               if cluster.redis.type(k) == b"list")
    if left:
        print(f"warning: {left} broker messages left in {QUEUE!r}: the next worker drains them first", flush=True)
    return len(ids)


def httpx_load_ids(cluster: Cluster, ids: list[str]) -> None:
    import httpx

    async def go():
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=cluster.base, headers=cluster.headers, limits=limits, timeout=30) as c:
            sem = asyncio.Semaphore(8)

            async def one(job_id):
                async with sem:
                    await c.post(f"/v1/jobs/{job_id}/cancel")

            await asyncio.gather(*(one(i) for i in ids))

    asyncio.run(go())


# ------------------------------------------------------------------ the benchmark

PARTS = ("submissions", "jobs", "reads", "scale")
SCALE = {"polls": 10_000, "streams": 2_000, "jobs": 1_000, "running": 200, "finished": 100}
SCALE_QUICK = {"polls": 2_000, "streams": 400, "jobs": 200, "running": 40, "finished": 20}


def collect(opts: BenchOptions | None = None, *, n: int | None = None, device: str = "cpu",
            parts: tuple[str, ...] = PARTS, scale: dict | None = None) -> dict:
    import httpx

    from bench.reads import anchor_ratio, read_cost_breakdown, succeeded_job
    from bench.service_rows import job_rows, load_rows
    from bench.waiters import raise_fd_limit, scale_run

    opts = opts or BenchOptions()
    n = n or (50 if opts.quick else 60)
    load_s = 3.0 if opts.quick else 5.0
    read_s, rounds = (4.0, 2) if opts.quick else (8.0, 3)
    scale = scale or (SCALE_QUICK if opts.quick else SCALE)
    conns = 16
    fd_limit = raise_fd_limit()  # before the API starts: it inherits the limit (the scale run needs it)
    settings = {"parts": list(parts), "jobs_per_mode": n, "steps": STEPS, "image": [SIZE, SIZE],
                "sag_scale": PARAMS["sag_scale"], "sag_threshold": PARAMS["sag_threshold"],
                "guidance": PARAMS["guidance"], "seed": SEED, "model_profile": "tiny", "device": device,
                "torch_threads": 1, "redis": BENCH_REDIS_URL, "object_store": "local, HMAC-signed URLs",
                "api_processes": 1, "worker": "1 Celery solo process", "load_seconds": load_s,
                "load_connections": conns, "anchor_seconds": read_s, "anchor_rounds": rounds, "scale": scale,
                "fd_limit": fd_limit, "wrk": shutil.which("wrk") is not None, "progress_interval_s": 0.25,
                "rate_limit": "set out of reach (limiter still runs)", "waiter_cap": "set out of reach"}
    png = _photo_png()
    tmp = Path(tempfile.mkdtemp(prefix="vj-bench-service-"))
    cluster = Cluster(tmp, device)
    details: dict = {}
    try:
        details["api_start_s"] = cluster.start_api()
        client = httpx.Client(base_url=cluster.base, headers=cluster.headers, timeout=60)
        if "submissions" in parts:  # into the queue, no worker yet
            upload_id = client.post("/v1/uploads", files={"file": ("photo.png", png, "image/png")}).json()["id"]
            body = {"image": upload_id, **PARAMS}
            print("submissions/s ...", flush=True)
            subs = []
            w = with_cpu(cluster, lambda: wrk_load(f"{cluster.base}/v1/colorizations", cluster.headers, load_s,
                                                   conns, method="POST", body=json.dumps(body), tmp=tmp))
            if w is not None:
                subs.append(w)
                cancel_queued(cluster)
            h = with_cpu(cluster, lambda: httpx_load(f"{cluster.base}/v1/colorizations", cluster.headers, load_s,
                                                     conns, method="POST", json_body=body))
            subs.append(h)
            details["canceled_after_submission_test"] = cancel_queued(cluster, h.pop("ids"))
            details["submissions"] = [{k: v for k, v in s.items() if k != "raw"} for s in subs]
        if "jobs" in parts:
            details.update(run_jobs(cluster, client, png, n, device))
        if "reads" in parts:
            print("status reads: service vs anchor ...", flush=True)
            done = succeeded_job(cluster)
            details["anchor"] = anchor_ratio(cluster, done, read_s, rounds, conns)
            url = f"{cluster.base}/v1/jobs/{done}"
            reads = [x for x in (with_cpu(cluster, lambda: wrk_load(url, cluster.headers, load_s, conns)),
                                 with_cpu(cluster, lambda: httpx_load(url, cluster.headers, load_s, conns)))
                     if x is not None]
            for r in reads:
                r.pop("ids", None)
            details["status_reads"] = [{k: v for k, v in r.items() if k != "raw"} for r in reads]
            try:
                details["read_cost"] = read_cost_breakdown(cluster, done, n=100 if opts.quick else 300)
            except Exception as exc:  # the profile is an extra: report, do not lose the run
                details["read_cost"] = {"error": f"{type(exc).__name__}: {exc}"}
        if "scale" in parts:
            cluster.stop_worker()
            print(f"scale run: {scale['polls']} long-polls + {scale['streams']} streams ...", flush=True)
            reader_job = client.post("/v1/video-generations", json={"prompts": ["x"], "steps": 1, "width": 64,
                                                                     "height": 64}, headers=cluster.reader_headers)
            reader_job = reader_job.json()["id"]
            client.post(f"/v1/jobs/{reader_job}/cancel", headers=cluster.reader_headers)
            details["scale"] = scale_run(cluster, **scale, read_s=load_s * 2, reader_headers=cluster.reader_headers,
                                         reader_job=reader_job, tmp=tmp)
        client.close()
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    if "jobs" in parts:
        rows += job_rows(details, n)
    rows += load_rows(details)
    if "scale" in parts:
        from bench.waiters import rows as scale_rows

        rows += scale_rows(details["scale"])
    return {"settings": settings, "rows": rows, "details": details}


def run_jobs(cluster: Cluster, client, png: bytes, n: int, device: str) -> dict:
    """Cold and warm worker starts, then N jobs per completion mode, alternating, and N direct
    pipeline calls in between (never at the same time), so both sample the same load."""
    print("loading the direct pipeline ...", flush=True)
    direct_call = Direct(png, device)
    print("cold start (no --preload) ...", flush=True)
    cold_ready = cluster.start_worker(preload=False)
    cold_jobs = [one_job(cluster, client, png, "wait") for _ in range(4)]
    cluster.stop_worker()
    print("warm start (--preload) ...", flush=True)
    warm_ready = cluster.start_worker(preload=True)
    warm_first = one_job(cluster, client, png, "wait")
    print(f"full path x {2 * n}, direct x {n} ...", flush=True)
    runs, direct = [], []
    for i in range(2 * n):
        runs.append(one_job(cluster, client, png, ("wait", "sse")[i % 2]))
        if i % 2:
            direct.append(direct_call())
    return {"direct_s": direct, "cold_ready_s": cold_ready, "cold_jobs": cold_jobs, "preload_ready_s": warm_ready,
            "preload_first_job": warm_first, "runs": runs}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None, help="jobs per completion mode (default 60, --quick 50)")
    ap.add_argument("--device", default="cpu", help="pipeline device of the worker and of the direct run")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--polls", type=int, default=None, help="scale run: long-polls (default 10,000)")
    ap.add_argument("--streams", type=int, default=None, help="scale run: SSE streams (default 2,000)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/service_<device>.json)")
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}")
    scale = dict(SCALE_QUICK if args.quick else SCALE)
    scale.update({k: v for k, v in (("polls", args.polls), ("streams", args.streams)) if v is not None})
    res = collect(BenchOptions(quick=args.quick), n=args.n, device=args.device, parts=parts, scale=scale)
    suffix = "" if parts == PARTS else "_" + "_".join(parts)
    return print_and_save("service", res, args.out, f"service_{args.device}{'_quick' if args.quick else ''}{suffix}")


if __name__ == "__main__":
    main()
