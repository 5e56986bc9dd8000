"""Load generators and process meters shared by the service benchmarks (bench/service.py,
bench/waiters.py, bench/cpu_workers.py). Figures are measured here, never asserted."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import summary

def _parse_wrk_time(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def wrk_load(url: str, headers: dict, duration: float, connections: int, *, method: str = "GET",
             body: str | None = None, tmp: Path | None = None) -> dict | None:
    """`wrk` (one thread) when it is installed; None otherwise."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    cmd = [exe, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if method != "GET":
        script = (tmp or Path(tempfile.gettempdir())) / "wrk_body.lua"
        script.write_text(f"wrk.method = {json.dumps(method)}\nwrk.body = {json.dumps(body or '')}\n"
                          'wrk.headers["Content-Type"] = "application/json"\n')
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60).stdout
    res = {"client": "wrk -t1", "connections": connections, "duration_s": duration, "raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_s"] = _parse_wrk_time(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def httpx_load(url: str, headers: dict, duration: float, concurrency: int, *, method: str = "GET",
               json_body: dict | None = None, count: int | None = None) -> dict:
    """An async httpx generator: `concurrency` requests in flight for `duration` seconds (or
    until `count` requests were sent). Latency per request, status counts, response bodies of
    POSTs (their job ids)."""
    import httpx

    async def go():
        lat, errors, ids = [], 0, []
        sent = 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as c:
            stop = time.perf_counter() + duration

            async def worker():
                nonlocal errors, sent
                while time.perf_counter() < stop and (count is None or sent < count):
                    sent += 1
                    t = time.perf_counter()
                    r = await c.request(method, url, json=json_body)
                    lat.append(time.perf_counter() - t)
                    if r.status_code >= 300:
                        errors += 1
                    elif method == "POST":
                        ids.append(r.json()["id"])

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return lat, errors, ids, time.perf_counter() - t0

    lat, errors, ids, elapsed = asyncio.run(go())
    s = summary(lat)
    return {"client": "httpx async", "connections": concurrency, "duration_s": elapsed, "requests": len(lat),
            "rps": len(lat) / elapsed if elapsed else None, "p50_s": s["p50"], "p99_s": s["p99"], "errors": errors,
            "ids": ids}


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_snapshot(cluster, pid: int | None = None) -> dict:
    import resource

    info = cluster.redis.info("cpu")
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"api": _proc_cpu_s(pid or cluster.api.p.pid), "redis": info["used_cpu_user"] + info["used_cpu_sys"],
            "client": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}


def with_cpu(cluster, fn, pid: int | None = None):
    """Run a load; add the CPU milliseconds per request that the server process (the API, or
    `pid`), the Redis server and the load generator (this process and its children, e.g. wrk)
    spent during it."""
    before = cpu_snapshot(cluster, pid)
    res = fn()
    after = cpu_snapshot(cluster, pid)
    if res is not None and res.get("requests"):
        for k in before:
            if before[k] is not None and after[k] is not None:
                res[f"{k}_cpu_ms_per_req"] = 1e3 * (after[k] - before[k]) / res["requests"]
    return res


def proc_status(pid: int) -> dict:
    """VmRSS (bytes) and Threads of a process (Linux /proc)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "VmRSS":
                out["rss_bytes"] = int(value.split()[0]) * 1024
            elif name == "Threads":
                out["threads"] = int(value)
    except OSError:
        pass
    return out
