"""Scale run of bench/service.py: many long-polls and event streams on one API process.

One tenant holds `polls` long-polls (`GET /v1/jobs/{id}?wait=60`) and `streams` event streams
(`GET /v1/jobs/{id}/events`) open on `jobs` queued jobs; a fake worker in this process claims
`running` of them and reports progress on each once a second, so the streams carry frames.
Meanwhile another tenant's status reads run against the same API process (wrk, or httpx when
wrk is absent). Then `finished` of the running jobs finish, and the waiters on them must
answer. Printed: the readers' p50/p99 and errors, 5xx counts of every client, the API's memory
and threads per open waiter, the wake-up latency, and whether every waiter was released when
the clients hung up. The file-descriptor limit is raised to its hard limit for this process
and its children (the API and the holder of the connections inherit it).

The connections are held by a child process (`python -m bench.waiters hold ...`): asyncio
raw sockets, a few KB each, writing its counts to a JSON file every half second.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, row, summary  # noqa: E402
from bench.load import httpx_load, proc_status, with_cpu, wrk_load  # noqa: E402

VIDEO = {"prompts": ["a red ball rolls"], "steps": 1, "width": 64, "height": 64}  # a kind no bench worker serves
FINAL = ("succeeded", "failed", "canceled")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ the holder (child process)

class Holder:
    def __init__(self, port: int, key: str, jobs: list[str], polls: int, streams: int, out: Path):
        self.port, self.key, self.jobs, self.out = port, key, jobs, out
        self.polls, self.streams = polls, streams
        self.codes: dict[str, int] = {}
        self.open_polls = self.open_streams = 0
        self.frames = self.connect_errors = self.read_errors = 0
        self.final_seen: dict[str, list[float]] = {}
        self.stop = asyncio.Event()
        self.connecting = asyncio.Semaphore(256)

    def _code(self, code: int) -> None:
        self.codes[str(code)] = self.codes.get(str(code), 0) + 1

    async def _connect(self):
        async with self.connecting:
            return await asyncio.open_connection("127.0.0.1", self.port)

    def _request(self, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.key}\r\n\r\n".encode()

    async def poll(self, job_id: str) -> None:
        try:
            reader, writer = await self._connect()
        except OSError:
            self.connect_errors += 1
            return
        try:
            while not self.stop.is_set():
                writer.write(self._request(f"/v1/jobs/{job_id}?wait=60"))
                self.open_polls += 1
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    body = await reader.readexactly(length)
                finally:
                    self.open_polls -= 1
                self._code(int(head.split(b" ", 2)[1]))
                status = json.loads(body).get("status")
                if status in FINAL:
                    self.final_seen.setdefault(job_id, []).append(time.time())
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            if not self.stop.is_set():
                self.read_errors += 1
        finally:
            writer.close()

    async def stream(self, job_id: str) -> None:
        try:
            reader, writer = await self._connect()
        except OSError:
            self.connect_errors += 1
            return
        counted = False
        try:
            writer.write(self._request(f"/v1/jobs/{job_id}/events"))
            head = await reader.readuntil(b"\r\n\r\n")
            self._code(int(head.split(b" ", 2)[1]))
            self.open_streams += 1
            counted = True
            while not self.stop.is_set():
                chunk = await reader.read(65536)
                self.frames += chunk.count(b"event: job")
                if not chunk or chunk.endswith(b"0\r\n\r\n"):  # closed, or the last chunk: the stream ended
                    self.final_seen.setdefault(job_id, []).append(time.time())
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            if not self.stop.is_set():
                self.read_errors += 1
        finally:
            if counted:
                self.open_streams -= 1
            writer.close()

    def report(self, done: bool = False) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"open_polls": self.open_polls, "open_streams": self.open_streams,
                                   "codes": self.codes, "frames": self.frames, "connect_errors": self.connect_errors,
                                   "read_errors": self.read_errors, "final_seen": self.final_seen, "done": done}))
        tmp.replace(self.out)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        tasks = [asyncio.ensure_future(self.poll(self.jobs[i % len(self.jobs)])) for i in range(self.polls)]
        tasks += [asyncio.ensure_future(self.stream(self.jobs[i % len(self.jobs)])) for i in range(self.streams)]
        while not self.stop.is_set():
            self.report()
            try:
                await asyncio.wait_for(self.stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.report(done=True)


async def paced_reads(port: int, key: str, job_id: str, rate: float, seconds: float, conns: int) -> dict:
    """`conns` keep-alive connections sending GET /v1/jobs/{id} at `rate` requests/s in all,
    each request at its scheduled time (a late one is sent at once): the latency a client sees
    at a steady load, not at saturation."""
    request = f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    latencies: list[float] = []
    codes: dict[str, int] = {}
    errors = 0

    async def one(offset: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        interval = conns / rate
        start = time.perf_counter() + offset
        i = 0
        try:
            while True:
                due = start + i * interval
                if due - start > seconds:
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                code = head.split(b" ", 2)[1].decode()
                codes[code] = codes.get(code, 0) + 1
                i += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k / rate) for k in range(conns)))
    s = summary(latencies)
    return {"client": f"paced, {rate:g} req/s over {conns} connections", "rate": rate, "connections": conns,
            "duration_s": time.perf_counter() - t0, "requests": len(latencies), "p50_s": s["p50"], "p99_s": s["p99"],
            "max_s": s["max"], "codes": codes, "errors": errors,
            "non_2xx": sum(n for c, n in codes.items() if not c.startswith("2"))}


def read_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    for name, kind in (("--port", int), ("--key", str), ("--job", str), ("--rate", float), ("--seconds", float),
                       ("--conns", int), ("--out", Path)):
        ap.add_argument(name, type=kind, required=True)
    a = ap.parse_args(argv)
    res = asyncio.run(paced_reads(a.port, a.key, a.job, a.rate, a.seconds, a.conns))
    a.out.write_text(json.dumps(res))


def hold_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--jobs", type=Path, required=True)
    ap.add_argument("--polls", type=int, required=True)
    ap.add_argument("--streams", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    holder = Holder(a.port, a.key, json.loads(a.jobs.read_text()), a.polls, a.streams, a.out)
    asyncio.run(holder.run())


# ------------------------------------------------------------------ the run (bench process)

class FakeWorker(threading.Thread):
    """Claims jobs straight in the store and reports progress on each once a second, the
    reports spread over the second (jobs that started at different times)."""

    def __init__(self, redis_url: str, job_ids: list[str]):
        super().__init__(daemon=True)
        from service.store.redis_store import RedisJobStore

        self.store = RedisJobStore(redis_url)
        self.ids = [j for j in job_ids if self.store.claim(j, "bench-fake-worker", 120).job is not None]
        self.stopped = threading.Event()
        self.beats = 0

    def run(self) -> None:
        step, start = 0, time.monotonic()
        while not self.stopped.is_set():
            step += 1
            ids = list(self.ids)
            for i, job_id in enumerate(ids):
                due = start + step - 1 + i / max(1, len(ids))
                if self.stopped.wait(max(0.0, due - time.monotonic())):
                    return
                if job_id in self.ids:
                    self.store.heartbeat(job_id, 1, 120, progress=min(0.99, step / 1000), stage=f"denoising {step}/1000")
                    self.beats += 1

    def finish(self, job_ids: list[str]) -> dict[str, float]:
        """Finish these jobs one after the other; the wall time each final state was written."""
        for job_id in job_ids:
            self.ids.remove(job_id)
        done = {}
        for job_id in job_ids:
            self.store.finish(job_id, 1, "succeeded", result={"video": None})
            done[job_id] = time.time()
        return done


def _waiters_metric(base: str) -> float | None:
    import httpx

    try:
        text = httpx.get(f"{base}/metrics", timeout=30).text
    except Exception:  # noqa: BLE001 - a busy server: report none
        return None
    for line in text.splitlines():
        if line.startswith("visionjobs_api_waiters "):
            return float(line.split()[1])
    return None


def _submit_jobs(base: str, headers: dict, n: int) -> list[str]:
    res = httpx_load(f"{base}/v1/video-generations", headers, duration=600, concurrency=16, method="POST",
                     json_body=VIDEO, count=n)
    return res["ids"]


def scale_run(cluster, *, polls: int, streams: int, jobs: int, running: int, finished: int, read_s: float,
              reader_headers: dict, reader_job: str, tmp: Path, read_rate: float = 200.0) -> dict:
    import httpx

    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    ids = _submit_jobs(cluster.base, cluster.headers, jobs)
    worker = FakeWorker(cluster.redis_url, ids[:running])
    worker.start()
    api = cluster.api.p.pid
    httpx.get(f"{cluster.base}/v1/jobs/{reader_job}", headers=reader_headers, timeout=30).raise_for_status()
    before = proc_status(api)
    jobs_file, out = tmp / "waiter_jobs.json", tmp / "holder.json"
    jobs_file.write_text(json.dumps(ids))
    holder = subprocess.Popen([sys.executable, "-m", "bench.waiters", "hold", "--port", str(cluster.port),
                               "--key", cluster.key, "--jobs", str(jobs_file), "--polls", str(polls),
                               "--streams", str(streams), "--out", str(out)], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    res: dict = {"fd_limit": fd_limit, "polls": polls, "streams": streams, "jobs": jobs, "running": running}
    try:
        t0 = time.perf_counter()
        state: dict = {}
        while time.perf_counter() - t0 < 300:
            time.sleep(0.5)
            state = json.loads(out.read_text()) if out.exists() else {}
            if state.get("open_polls", 0) + state.get("open_streams", 0) >= polls + streams or holder.poll() is not None:
                break
        res["ramp_s"] = time.perf_counter() - t0
        res["held"] = state.get("open_polls", 0) + state.get("open_streams", 0)
        res["server_waiters"] = _waiters_metric(cluster.base)
        time.sleep(2)
        held = proc_status(api)
        res.update(rss_before=before.get("rss_bytes"), rss_held=held.get("rss_bytes"),
                   threads_before=before.get("threads"), threads_held=held.get("threads"))
        if res["held"]:
            res["bytes_per_waiter"] = (held["rss_bytes"] - before["rss_bytes"]) / res["held"]
        # the other tenant: a steady load (the latency it sees), then a saturating one (what is left)
        paced_out = tmp / "paced.json"
        key = reader_headers["Authorization"].split(" ", 1)[1]
        subprocess.run([sys.executable, "-m", "bench.waiters", "read", "--port", str(cluster.port), "--key", key,
                        "--job", reader_job, "--rate", str(read_rate), "--seconds", str(read_s), "--conns", "8",
                        "--out", str(paced_out)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True,
                       timeout=read_s + 120)
        res["reads"] = json.loads(paced_out.read_text())
        url = f"{cluster.base}/v1/jobs/{reader_job}"
        sat = with_cpu(cluster, lambda: wrk_load(url, reader_headers, read_s / 2, 16, tmp=tmp)) or \
            with_cpu(cluster, lambda: httpx_load(url, reader_headers, read_s / 2, 16))
        sat.pop("ids", None)
        res["saturated_reads"] = {k: v for k, v in sat.items() if k != "raw"}
        frames_before = json.loads(out.read_text()).get("frames", 0)
        done = ids[:finished]
        finished_at = worker.finish(done)
        deadline = time.perf_counter() + 60
        expected = sum(1 for i in range(polls) if ids[i % len(ids)] in set(done)) + \
            sum(1 for i in range(streams) if ids[i % len(ids)] in set(done))
        while time.perf_counter() < deadline:
            time.sleep(0.5)
            state = json.loads(out.read_text())
            seen = [t - finished_at[j] for j in done for t in state["final_seen"].get(j, [])]
            if len(seen) >= expected:
                break
        res["wake_expected"], res["wake_seen"] = expected, len(seen)
        res["wake_s"] = summary(seen)
        res["frames_during_run"] = state.get("frames", 0)
        res["frames_after_reads"] = state.get("frames", 0) - frames_before
        res["progress_beats"] = worker.beats
    finally:
        holder.send_signal(signal.SIGTERM)
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
        worker.stopped.set()
    final = json.loads(out.read_text()) if out.exists() else {}
    res.update(codes=final.get("codes", {}), connect_errors=final.get("connect_errors"),
               read_errors=final.get("read_errors"))
    res["client_5xx"] = sum(n for code, n in res["codes"].items() if code.startswith("5"))
    t0 = time.perf_counter()
    left = None
    while time.perf_counter() - t0 < 30:
        left = _waiters_metric(cluster.base)
        if left == 0:
            break
        time.sleep(0.5)
    res["waiters_after_hangup"], res["release_s"] = left, time.perf_counter() - t0
    after = proc_status(api)
    res.update(rss_after=after.get("rss_bytes"), threads_after=after.get("threads"))
    for job_id in worker.ids:  # what is still running: end it, then cancel the queued rest
        worker.store.finish(job_id, 1, "canceled", error={"code": "canceled", "message": "bench over"})
    for job_id in ids:
        worker.store.request_cancel(job_id)
    cluster.redis.delete("video.generate")  # their broker messages
    return res


def rows(res: dict) -> list[dict]:
    case = f"scale: {res['polls']:,} long-polls + {res['streams']:,} SSE streams, one API process"
    r, sat = res.get("reads", {}), res.get("saturated_reads", {})
    out = [row(case, "waiters held at once", res.get("held"), "", f"server counted {res.get('server_waiters')}; "
               f"fd limit {res['fd_limit']}; ramp {res.get('ramp_s', 0):.1f} s"),
           row(case, "other tenant's status reads p50", (r.get("p50_s") or float("nan")) * 1e3, "ms",
               f"{r.get('client')}, meanwhile; {r.get('requests')} requests"),
           row(case, "other tenant's status reads p99", (r.get("p99_s") or float("nan")) * 1e3, "ms", "goal < 100 ms"),
           row(case, "other tenant's non-2xx", (r.get("non_2xx") or 0) + (r.get("errors") or 0), "requests",
               f"codes {r.get('codes')}"),
           row(case, "other tenant's reads/s at saturation", sat.get("rps"), "req/s",
               f"{sat.get('client')}, c={sat.get('connections')}: what the held waiters leave"),
           row(case, "saturated reads p99", (sat.get("p99_s") or float("nan")) * 1e3, "ms", "queueing of the load itself"),
           row(case, "saturated reads non-2xx", (sat.get("errors") or 0) + (sat.get("socket_errors") or 0), "requests"),
           row(case, "waiters' 5xx", res.get("client_5xx"), "responses", f"codes {res.get('codes')}"),
           row(case, "waiters' connect/read errors", (res.get("connect_errors") or 0) + (res.get("read_errors") or 0),
               "connections")]
    if res.get("bytes_per_waiter") is not None:
        out.append(row(case, "API memory per waiter", res["bytes_per_waiter"] / 1024, "KiB",
                       f"RSS {res['rss_before'] / 2**20:.0f} -> {res['rss_held'] / 2**20:.0f} MiB"))
    out += [row(case, "API threads before / held", f"{res.get('threads_before')} / {res.get('threads_held')}", "",
                "no thread per waiter"),
            row(case, "wake-up after finish p50", (res["wake_s"]["p50"] or float("nan")) * 1e3, "ms",
                f"{res.get('wake_seen')}/{res.get('wake_expected')} waiters of the finished jobs answered"),
            row(case, "wake-up after finish p99", (res["wake_s"]["p99"] or float("nan")) * 1e3, "ms"),
            row(case, "SSE frames delivered", res.get("frames_during_run"), "frames",
                f"{res.get('progress_beats')} progress writes by the fake worker"),
            row(case, "waiters left after hang-up", res.get("waiters_after_hangup"), "",
                f"after {res.get('release_s', 0):.1f} s")]
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["hold"]:
    hold_main(sys.argv[2:])
elif __name__ == "__main__" and sys.argv[1:2] == ["read"]:
    read_main(sys.argv[2:])
