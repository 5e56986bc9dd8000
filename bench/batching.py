"""Dynamic batching of colorize jobs, off vs on, under load: the same N jobs (same photo size and
settings, different seeds) are all submitted at once to `visionjobs api` + one `visionjobs
worker` with VISIONJOBS_BATCH_MAX = 1, then = 4. Reports jobs/s (first submit to last final
state) and per-job latency (created_at -> finished_at, p50/p95).

    python bench/batching.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchOptions, format_table, row, summary  # noqa: E402
from bench.service import PARAMS, Cluster, _photo_png, wait_longpoll  # noqa: E402

BATCH_SIZES = (1, 4)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_load(batch_max: int, n: int, device: str, png: bytes) -> dict:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix=f"vj-bench-batch{batch_max}-"))
    cluster = Cluster(tmp, device)
    cluster.env["VISIONJOBS_BATCH_MAX"] = str(batch_max)
    try:
        cluster.start_api()
        client = httpx.Client(base_url=cluster.base, headers=cluster.headers, timeout=120)
        image = client.post("/v1/uploads", files={"file": ("photo.png", png, "image/png")}).json()["id"]
        cluster.start_worker(preload=True)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda i: client.post("/v1/colorizations", json={
                "image": image, **PARAMS, "seed": 1000 + i}).json()["id"], range(n)))
            finals = list(pool.map(lambda job_id: wait_longpoll(client, job_id), ids))
        wall = time.perf_counter() - t0
        ok = [f for f in finals if f["status"] == "succeeded"]
        latency = summary([_ts(f["finished_at"]) - _ts(f["created_at"]) for f in ok])
        return {"batch_max": batch_max, "jobs": n, "succeeded": len(ok), "wall_s": wall, "jobs_per_s": len(ok) / wall,
                "latency_p50_s": latency["p50"], "latency_p95_s": latency["p95"]}
    finally:
        cluster.close()


def collect(opts: BenchOptions | None = None, *, n: int | None = None, device: str = "cpu") -> dict:
    opts = opts or BenchOptions()
    n = n or (16 if opts.quick else 32)
    png = _photo_png()
    runs = [run_load(b, n, device, png) for b in BATCH_SIZES]
    rows = []
    for r in runs:
        case = f"colorize under load, VISIONJOBS_BATCH_MAX={r['batch_max']}"
        rows += [row(case, "jobs/s", r["jobs_per_s"], "jobs/s", f"{r['succeeded']}/{r['jobs']} jobs submitted at once"),
                 row(case, "latency p50", r["latency_p50_s"], "s", "created -> finished"),
                 row(case, "latency p95", r["latency_p95_s"], "s")]
    base = runs[0]["jobs_per_s"]
    rows.append(row("batching", f"jobs/s batch {BATCH_SIZES[-1]} / batch 1", runs[-1]["jobs_per_s"] / base, "x"))
    settings = {"jobs": n, "device": device, "batch_sizes": list(BATCH_SIZES), "params": PARAMS,
                "workers": "1 Celery solo process (preloaded)", "model_profile": "tiny"}
    return {"settings": settings, "rows": rows, "details": {"runs": runs}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    res = collect(BenchOptions(quick=args.quick), n=args.n, device=args.device)
    print(format_table({"batching": res["rows"]}))
    return res


if __name__ == "__main__":
    main()
