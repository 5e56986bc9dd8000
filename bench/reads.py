"""Status reads of bench/service.py: against the anchor app, and where one read's time goes."""
from __future__ import annotations

import asyncio
import sys
import time

from bench.common import BENCH_REDIS_URL, ROOT, summary
from bench.load import with_cpu, wrk_load
from bench.service_job import PARAMS, SEED, SIZE


def read_cost_breakdown(cluster, job_id: str, n: int = 300) -> dict:
    """Where the time of one GET /v1/jobs/{id} goes: the service's own per-request work timed
    in this process with the API's settings and the same Redis (the key lookup, the rate
    limiter's local bucket, the async store's read, rendering: URL signing and the pydantic
    JSON), against one whole request over HTTP with one connection (the rest is uvicorn,
    FastAPI routing and the client)."""
    import httpx

    from service.app import build_context, close_request_path, open_request_path
    from service.core.config import Settings
    from service.jobs import render_json

    settings = Settings(**{k.removeprefix("VISIONJOBS_").lower(): v for k, v in cluster.env.items()
                           if k.startswith("VISIONJOBS_")})
    ctx = build_context(settings)

    async def profile() -> dict:
        tasks = await open_request_path(ctx)
        job = await ctx.astore.read_job(job_id)

        async def per_call(fn) -> float:
            for _ in range(20):
                await fn()
            t = time.perf_counter()
            for _ in range(n):
                await fn()
            return (time.perf_counter() - t) / n

        async def lookup():
            ctx.keyring.tenant_for(cluster.key)

        out = {"tenant_lookup_s": await per_call(lookup),
               "rate_limiter_s": await per_call(lambda: ctx.limiter.hit("bench-profile")),
               "store_read_job_s": await per_call(lambda: ctx.astore.read_job(job_id)),
               "render_json_s": await per_call(lambda: render_json(ctx, job, cluster.base))}
        await close_request_path(ctx, tasks)
        return out

    out = asyncio.run(profile())
    out["app_work_s"] = sum(out.values())
    with httpx.Client(base_url=cluster.base, headers=cluster.headers) as c:
        url = f"/v1/jobs/{job_id}"
        for _ in range(20):
            c.get(url)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            c.get(url)
            lat.append(time.perf_counter() - t)
    out["http_sequential_p50_s"] = summary(lat)["p50"]
    return out


def succeeded_job(cluster, tenant: str = "bench") -> str:
    """A succeeded colorize job with one output image, written through the store as a worker
    would (status reads render it: the URL is signed on every read)."""
    from service.store.base import JobRecord, new_id
    from service.store.redis_store import RedisJobStore

    store = RedisJobStore(BENCH_REDIS_URL)
    job = JobRecord(id=new_id("job"), tenant=tenant, kind="colorize", params={"image": "upl_" + "0" * 24, **PARAMS})
    store.create_job(job)
    store.claim(job.id, "bench", 30)
    store.finish(job.id, 1, "succeeded", model_profile="tiny", result={
        "images": [{"key": f"jobs/{job.id}/output_0.png", "width": SIZE, "height": SIZE, "content_type": "image/png"}],
        "seed": SEED})
    store.close()
    return job.id


def anchor_ratio(cluster, job_id: str, duration: float, rounds: int, conns: int = 16) -> dict:
    """The service's GET /v1/jobs/{id} against bench/anchor_app.py (same uvicorn settings, same
    Redis, same job), wrk runs alternating anchor, service, anchor, ... in this one run."""
    from tests.conftest import free_port
    from tests.integration.procs import Proc, wait_http

    port = free_port()
    anchor = Proc([sys.executable, "-m", "bench.anchor_app", "--port", str(port)],
                  dict(cluster.env, BENCH_ANCHOR_REDIS_URL=BENCH_REDIS_URL, PYTHONPATH=str(ROOT)),
                  cluster.tmp / "anchor.log", cwd=ROOT)
    runs: dict[str, list[dict]] = {"anchor": [], "service": []}
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/jobs/{job_id}", anchor)
        for target, url, headers, pid in (("anchor", f"http://127.0.0.1:{port}/v1/jobs/{job_id}", {}, anchor.p.pid),
                                          ("service", f"{cluster.base}/v1/jobs/{job_id}", cluster.headers, None)):
            wrk_load(url, headers, 1.0, conns)  # warm-up
        for _ in range(rounds):
            for target, url, headers, pid in (("anchor", f"http://127.0.0.1:{port}/v1/jobs/{job_id}", {}, anchor.p.pid),
                                              ("service", f"{cluster.base}/v1/jobs/{job_id}", cluster.headers, None)):
                res = with_cpu(cluster, lambda: wrk_load(url, headers, duration, conns), pid=pid)
                if res is None:
                    return {"error": "wrk is not installed (e.g. apt-get install wrk): no anchor ratio"}
                runs[target].append({k: v for k, v in res.items() if k != "raw"})
    finally:
        anchor.stop()
    out: dict = {"rounds": rounds, "duration_s": duration, "connections": conns, "runs": runs}
    for target, rs in runs.items():
        out[target] = {"rps": sum(r["requests"] or 0 for r in rs) / sum(r["duration_s"] for r in rs),
                       "p50_s": summary([r.get("p50_s") for r in rs])["p50"],
                       "p99_s": summary([r.get("p99_s") for r in rs])["p50"],
                       "cpu_ms_per_req": summary([r.get("api_cpu_ms_per_req") for r in rs])["p50"],
                       "non_2xx": sum((r.get("errors") or 0) + (r.get("socket_errors") or 0) for r in rs)}
    out["ratio_rps"] = out["service"]["rps"] / out["anchor"]["rps"]
    out["ratio_per_round"] = [s["rps"] / a["rps"] for a, s in zip(runs["anchor"], runs["service"])]
    if out["service"]["cpu_ms_per_req"] and out["anchor"]["cpu_ms_per_req"]:
        out["ratio_cpu"] = out["anchor"]["cpu_ms_per_req"] / out["service"]["cpu_ms_per_req"]
    return out
