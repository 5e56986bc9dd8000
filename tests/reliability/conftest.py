"""Fault tests with real processes: `visionjobs api`, `visionjobs worker` launchers, and Redis
(database 13 of the shared server, or a private `redis-server` the test may kill and restart).

Jobs are tiny on purpose (tiny profile, 64x64 photos, SAG off, 1-2 steps) and workers run with
one thread, so the whole directory stays within a few minutes on two CPU cores.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import TEST_REDIS_PORT, free_port
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes
from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_for_log, wait_http

SHARED_REDIS_URL = f"redis://127.0.0.1:{TEST_REDIS_PORT}/13"
SIGNING_SECRET = "reliability-signing-secret-0123456789abcdef"
LEASE_S = 2.0
FINAL = ("succeeded", "failed", "canceled")
TINY = {"steps": 1, "sag_scale": 0}

# "2025-01-31 12:00:00,123 INFO visionjobs.worker [4242] job job_... (colorize) attempt 1 started on name:4242"
_STARTED = re.compile(r"^(\S+ \S+) INFO visionjobs\.worker \[(\d+)\] job (job_[0-9a-f]{24}) \(([\w.]+)\) "
                      r"attempt (\d+) started on \S+", re.M)
_FINISHED = re.compile(r"^(\S+ \S+) INFO visionjobs\.worker \[(\d+)\] job (job_[0-9a-f]{24}) -> (\w+)", re.M)


def log_time(stamp: str) -> float:
    """A logging asctime ("2025-01-31 12:00:00,123", local time) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass(frozen=True)
class Start:
    job_id: str
    attempt: int
    pid: int
    at: float  # Unix time from the worker's log line (millisecond resolution)


class RedisServer:
    """A private redis-server on a free port: AOF with `appendfsync everysec` in its own dir."""

    def __init__(self, workdir: Path, *, aof: bool = True):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aof = aof
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # no retries: SHUTDOWN closes the connection, and a retry would wait on a dead port
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log")]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                c = self.client()
                # loading an AOF answers LOADING errors until it is done
                if c.ping() and c.info("persistence").get("loading", 0) == 0:
                    c.close()
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def shutdown(self) -> None:
        """Clean stop: SHUTDOWN rewrites nothing but fsyncs the AOF before exiting."""
        try:
            self.client().shutdown()
        except redis.ConnectionError:
            pass
        self.proc.wait(timeout=20)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


class Cluster:
    """One `visionjobs api` and any number of `visionjobs worker` launchers (one CPU process each)."""

    def __init__(self, tmp: Path, redis_url: str, **env: str):
        self.tmp, self.redis_url = tmp, redis_url
        self.env = clean_env(**{
            "VISIONJOBS_REDIS_URL": redis_url, "VISIONJOBS_API_KEYS": KEYS, "VISIONJOBS_DATA_DIR": str(tmp / "data"),
            "VISIONJOBS_SIGNING_SECRET": SIGNING_SECRET, "VISIONJOBS_MODEL_PROFILE": "tiny",
            "VISIONJOBS_DEVICE": "cpu", "VISIONJOBS_LEASE_S": str(LEASE_S), "VISIONJOBS_REAPER_INTERVAL_S": "0.25",
            "VISIONJOBS_PROGRESS_INTERVAL_S": "0.1", **env})
        self.port = free_port()
        self.api: Proc | None = None
        self.api_logs: list[Path] = []
        self.workers: list[Proc] = []
        self._uploads: dict[int, str] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- processes ---
    def start_api(self, wait: bool = True) -> Proc:
        if self.api is not None:
            self.api.stop()  # (a no-op but closing its log when a test already stopped it)
        log = self.tmp / f"api{len(self.api_logs)}.log"
        self.api_logs.append(log)
        self.api = Proc([*VISIONJOBS, "api", "--port", str(self.port)], self.env, log)
        if wait:
            wait_http(f"{self.base}/healthz", self.api, timeout=60)
        return self.api

    def start_workers(self, n: int, queues: str = "colorize", **env: str) -> list[Proc]:
        new = [Proc([*VISIONJOBS, "worker", "--queues", queues, "--preload"], {**self.env, **env},
                    self.tmp / f"worker{len(self.workers) + i}.log") for i in range(n)]
        self.workers += new
        for w in new:
            wait_for_log(w, "ready.", timeout=180)
        return new

    def close(self) -> None:
        """SIGTERM to every process group at once (Celery's warm shutdown takes seconds each)."""
        procs = [p for p in [self.api, *self.workers] if p is not None]
        for p in procs:
            if p.p.poll() is None:
                try:
                    os.killpg(p.p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            p.stop(signal.SIGKILL, timeout=10)  # whatever is left; closes the logs

    # --- client ---
    def upload(self, size: int = 64) -> str:
        if size not in self._uploads:
            files = {"file": ("p.png", png_bytes(photo(size, size)), "image/png")}
            r = httpx.post(f"{self.base}/v1/uploads", files=files, headers=auth(ALICE), timeout=30)
            assert r.status_code == 201, r.text
            self._uploads[size] = r.json()["id"]
        return self._uploads[size]

    def submit(self, size: int = 64, **params) -> dict:
        body = {"image": self.upload(size), "seed": 1, **TINY, **params}
        r = httpx.post(f"{self.base}/v1/colorizations", json=body, headers=auth(ALICE), timeout=30)
        assert r.status_code == 202, r.text
        return r.json()

    def get(self, job_id: str, **params) -> dict:
        r = httpx.get(f"{self.base}/v1/jobs/{job_id}", params=params, headers=auth(ALICE),
                      timeout=params.get("wait", 0) + 30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_final(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.get(job_id, wait=min(20, max(1, int(deadline - time.monotonic()))))
            except httpx.TransportError:  # the API is restarting
                time.sleep(0.2)
                continue
            if job["status"] in FINAL:
                return job
        raise TimeoutError(f"{job_id} not final after {timeout} s: {self.get(job_id)}")

    def wait_status(self, job_id: str, pred, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if pred(job):
                return job
            time.sleep(0.05)
        raise TimeoutError(f"{job_id}: condition not met after {timeout} s: {job}")

    # --- what the workers did ---
    def worker_logs(self) -> str:
        return "\n".join(w.log() for w in self.workers)

    def starts(self) -> dict[str, list[Start]]:
        out: dict[str, list[Start]] = defaultdict(list)
        for m in _STARTED.finditer(self.worker_logs()):
            out[m.group(3)].append(Start(m.group(3), int(m.group(5)), int(m.group(2)), log_time(m.group(1))))
        return out

    def finishes(self) -> dict[str, list[tuple[str, int, float]]]:
        out: dict[str, list] = defaultdict(list)
        for m in _FINISHED.finditer(self.worker_logs()):
            out[m.group(3)].append((m.group(4), int(m.group(2)), log_time(m.group(1))))
        return out

    def worker_pid(self, job_id: str) -> int:
        worker = redis.Redis.from_url(self.redis_url, decode_responses=True).hget(f"vj:job:{job_id}", "worker")
        return int(worker.rsplit(":", 1)[1])

    def status_in_store(self, job_id: str) -> str | None:
        return redis.Redis.from_url(self.redis_url, decode_responses=True).hget(f"vj:job:{job_id}", "status")

    def events(self, job_id: str) -> list[dict]:
        """The job's event stream in Redis: version, status, progress, stage and the server time (s)."""
        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        return [{**fields, "at": int(entry_id.split("-")[0]) / 1000}
                for entry_id, fields in r.xrange(f"vj:events:{job_id}")]

    def outputs(self, job_id: str) -> list[str]:
        root = self.tmp / "data" / "objects" / "jobs" / job_id
        return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture(scope="session")
def shared_redis():
    """Database 13 of the shared server, flushed before and after."""
    client = redis.Redis.from_url(SHARED_REDIS_URL)
    client.ping()
    client.flushdb()
    yield SHARED_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, shared_redis):
    """api + 3 worker processes on the shared Redis: at most 2 attempts per job, 2 s leases."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), shared_redis, VISIONJOBS_MAX_ATTEMPTS="2")
    try:
        c.start_api()
        c.start_workers(3)
        yield c
    finally:
        c.close()


def problem(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/problem+json"), (r.status_code, r.text)
    body = json.loads(r.text)
    assert body["status"] == r.status_code
    return body
