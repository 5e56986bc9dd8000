"""The rows bench/service.py prints: the jobs through the whole path, and the load runs."""
from __future__ import annotations

from bench.common import row, summary
from bench.service_job import SIZE, STEPS


def job_rows(details: dict, n: int) -> list[dict]:
    direct, runs, cold_jobs = details["direct_s"], details["runs"], details["cold_jobs"]
    cold_ready, warm_ready, warm_first = details["cold_ready_s"], details["preload_ready_s"], details["preload_first_job"]
    d = summary(direct)
    rows = [row("direct pipeline, warm process", "p50", d["p50"] * 1e3, "ms",
                f"N={n}, {STEPS} steps, {SIZE}px, SAG on; interleaved with the jobs"),
            row("direct pipeline, warm process", "p95", d["p95"] * 1e3, "ms")]
    failed = sum(r["status"] != "succeeded" for r in runs)
    for mode, label in (("wait", "full path, ?wait= long-poll"), ("sse", "full path, SSE")):
        rs = [r for r in runs if r["mode"] == mode and r["status"] == "succeeded" and "overhead_s" in r]
        e2e, ovh = summary([r["e2e_s"] for r in rs]), summary([r["overhead_s"] for r in rs])
        ovc, pipe = summary([r["overhead_incl_callbacks_s"] for r in rs]), summary([r["pipeline_s"] for r in rs])
        rows += [row(label, "e2e p50", e2e["p50"] * 1e3, "ms", f"N={len(rs)}"),
                 row(label, "e2e p95", e2e["p95"] * 1e3, "ms"),
                 row(label, "worker pipeline p50", pipe["p50"] * 1e3, "ms", "probe: the pipeline call in the worker"),
                 row(label, "overhead p50", ovh["p50"] * 1e3, "ms", "e2e - worker pipeline time (goal <= 25 ms)"),
                 row(label, "overhead p95", ovh["p95"] * 1e3, "ms"),
                 row(label, "overhead incl. step callbacks p50", ovc["p50"] * 1e3, "ms",
                     "+ progress/cancel checks inside the pipeline"),
                 row(label, "overhead incl. step callbacks p95", ovc["p95"] * 1e3, "ms"),
                 row(label, "overhead / direct pipeline p50", 100 * ovh["p50"] / d["p50"], "%", "goal < 5 % of a 0.5 s job"),
                 row(label, "e2e p50 / direct pipeline p50", e2e["p50"] / d["p50"], "x")]
    ok = [r for r in runs if r["status"] == "succeeded" and "overhead_s" in r]
    for key, label, note in (
            ("upload_s", "upload (POST /v1/uploads)", ""),
            ("submit_s", "submit (POST /v1/colorizations)", ""),
            ("queue_to_start_s", "queue -> start (created_at -> started_at)", "idle worker: Celery delivery + claim"),
            ("start_to_pipeline_s", "start -> pipeline call", "read upload, decode, cache lookup, progress write"),
            ("callback_s", "step callbacks inside the pipeline", "store read per step + throttled writes"),
            ("pipeline_to_final_s", "pipeline -> final state", "PNG encode, storage write, final-state script"),
            ("download_s", "result download (signed URL)", "not part of e2e")):
        s = summary([r.get(key) for r in ok])
        rows.append(row("breakdown p50", label, s["p50"] * 1e3 if s["p50"] is not None else None, "ms", note))
    for mode, label in (("wait", "final -> seen, long-poll"), ("sse", "final -> seen, SSE")):
        s = summary([r.get("final_to_seen_s") for r in ok if r["mode"] == mode])
        rows.append(row("breakdown p50", label, s["p50"] * 1e3 if s["p50"] is not None else None, "ms",
                        "API wake-up, render, response"))
    q = summary([r.get("queue_to_start_s") for r in ok])
    rows += [row("queue-to-start, idle worker", "p50", q["p50"] * 1e3, "ms", f"N={q['n']}"),
             row("queue-to-start, idle worker", "p95", q["p95"] * 1e3, "ms")]
    later = summary([r["e2e_s"] for r in cold_jobs[1:]])
    main_p50 = summary([r["e2e_s"] for r in ok if r["mode"] == "wait"])["p50"]
    pipe_p50 = summary([r["pipeline_s"] for r in ok])["p50"]
    rows += [row("cold start, worker without --preload", "spawn -> ready", cold_ready, "s", "Celery `ready.`"),
             row("cold start, worker without --preload", "first job e2e", cold_jobs[0]["e2e_s"], "s",
                 "imports torch + builds the model"),
             row("cold start, worker without --preload", "first job model load", cold_jobs[0].get("load_s"), "s"),
             row("cold start, worker without --preload", "first job pipeline time", cold_jobs[0].get("pipeline_s"), "s",
                 "first forward passes"),
             row("cold start, worker without --preload", "later jobs e2e p50", later["p50"], "s", "jobs 2-4"),
             row("warm start, worker with --preload", "spawn -> ready", warm_ready, "s", "includes the model load"),
             row("warm start, worker with --preload", "first job e2e", warm_first["e2e_s"], "s"),
             row("warm start, worker with --preload", "first job model load", warm_first.get("load_s"), "s",
                 "cache hit"),
             row("warm start, worker with --preload", "first job pipeline time", warm_first.get("pipeline_s"), "s",
                 "first forward passes"),
             row("warm start, worker with --preload", "later jobs pipeline p50", pipe_p50, "s"),
             row("warm start, worker with --preload", "later jobs e2e p50", main_p50, "s", "the long-poll runs")]
    if failed:
        rows.append(row("full path", "jobs not succeeded", failed, "jobs"))
    return rows


def load_rows(details: dict) -> list[dict]:
    rows = []
    an = details.get("anchor")
    if an and "error" not in an:
        case = f"status reads vs the anchor app (wrk -t1, c={an['connections']}, {an['rounds']} x {an['duration_s']:g} s each, alternating)"
        for target, label in (("anchor", "anchor: FastAPI + redis.asyncio HGETALL + JSON"), ("service", "service")):
            t = an[target]
            rows += [row(case, f"{label} requests/s", t["rps"], "req/s"),
                     row(case, f"{label} p50", (t["p50_s"] or float("nan")) * 1e3, "ms"),
                     row(case, f"{label} p99", (t["p99_s"] or float("nan")) * 1e3, "ms"),
                     row(case, f"{label} CPU per request", t["cpu_ms_per_req"], "ms", "the server process"),
                     row(case, f"{label} non-2xx", t["non_2xx"], "requests")]
        rows += [row(case, "service / anchor, requests/s", an["ratio_rps"], "x", "goal >= 0.7"),
                 row(case, "service / anchor, per round", ", ".join(f"{r:.2f}" for r in an["ratio_per_round"]), ""),
                 row(case, "anchor CPU / service CPU per request", an.get("ratio_cpu"), "x",
                     "the same ratio by CPU time: steadier on a shared machine")]
    elif an:
        rows.append(row("status reads vs the anchor app", "unavailable", None, "", an["error"]))
    for s in details.get("submissions", []):
        case = f"submissions POST /v1/colorizations ({s['client']}, c={s['connections']})"
        rows += [row(case, "requests/s", s["rps"], "req/s", f"{s['requests']} jobs queued, no worker"),
                 row(case, "p50", (s.get("p50_s") or float("nan")) * 1e3, "ms"),
                 row(case, "p99", (s.get("p99_s") or float("nan")) * 1e3, "ms")]
        rows += _cpu_rows(case, s)
        if s.get("errors") or s.get("socket_errors"):
            rows.append(row(case, "errors", (s.get("errors") or 0) + (s.get("socket_errors") or 0), "requests"))
    for s in details.get("status_reads", []):
        case = f"status reads GET /v1/jobs/{{id}} ({s['client']}, c={s['connections']})"
        rows += [row(case, "requests/s", s["rps"], "req/s", "goal >= 2,000; one API process"),
                 row(case, "p50", (s.get("p50_s") or float("nan")) * 1e3, "ms"),
                 row(case, "p99", (s.get("p99_s") or float("nan")) * 1e3, "ms")]
        rows += _cpu_rows(case, s)
        if s.get("errors") or s.get("socket_errors"):
            rows.append(row(case, "errors", (s.get("errors") or 0) + (s.get("socket_errors") or 0), "requests"))
    rc = details.get("read_cost", {})
    case = "status read cost per request (profile)"
    if "error" in rc:
        rows.append(row(case, "unavailable", None, "", rc["error"][:120]))
    else:
        for key, label, note in (("tenant_lookup_s", "API key -> tenant", "in-process, same settings"),
                                 ("rate_limiter_s", "rate limiter (local leased bucket)", "no Redis round trip"),
                                 ("store_read_job_s", "async job store read (HMGET)", "Redis round trip"),
                                 ("render_json_s", "render: sign URL + pydantic JSON", ""),
                                 ("app_work_s", "sum: the service's own work", ""),
                                 ("http_sequential_p50_s", "whole request over HTTP, c=1, p50",
                                  "rest: uvicorn, FastAPI, client")):
            if key in rc:
                rows.append(row(case, label, rc[key] * 1e3, "ms", note))
    return rows


def _cpu_rows(case: str, s: dict) -> list[dict]:
    return [row(case, f"CPU per request, {who}", s[f"{who}_cpu_ms_per_req"], "ms", note)
            for who, note in (("api", "the API process"), ("redis", "the Redis server"),
                              ("client", "the load generator"))
            if s.get(f"{who}_cpu_ms_per_req") is not None]
