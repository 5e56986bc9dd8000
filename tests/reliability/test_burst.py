"""Burst: 200 tiny jobs from 20 concurrent clients across 3 worker processes. Every job succeeds,
each ran exactly once (the workers' own "attempt N started" log lines are counted), nothing is
left queued, leased or unacknowledged."""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

pytestmark = pytest.mark.integration
JOBS, CLIENTS = 200, 20


def test_burst_of_200_jobs_each_runs_exactly_once(cluster):
    cluster.upload()
    before = set(cluster.starts())

    def client(c: int) -> list[dict]:
        """One client: submits its share as fast as it can, then long-polls each job."""
        ids = [cluster.submit(seed=c * 1000 + i)["id"] for i in range(JOBS // CLIENTS)]
        return [cluster.wait_final(job_id, timeout=240) for job_id in ids]

    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        finals = [job for share in pool.map(client, range(CLIENTS)) for job in share]
    elapsed = time.monotonic() - t0

    ids = [f["id"] for f in finals]
    assert len(set(ids)) == JOBS
    assert Counter(f["status"] for f in finals) == {"succeeded": JOBS}, [f["error"] for f in finals if f["error"]]
    assert all(f["attempt"] == 1 for f in finals)

    starts = {job_id: s for job_id, s in cluster.starts().items() if job_id not in before}
    assert set(starts) == set(ids)
    duplicates = {job_id: s for job_id, s in starts.items() if len(s) != 1}
    assert not duplicates, duplicates
    finishes = cluster.finishes()
    assert all([f[0] for f in finishes[job_id]] == ["succeeded"] for job_id in ids)
    per_worker = Counter(s[0].pid for s in starts.values())
    assert len(per_worker) == 3, per_worker  # every worker process took a share

    # nothing stuck: store queue, leases, Celery's queue and its unacked messages all empty
    r = redis.Redis.from_url(cluster.redis_url)
    deadline = time.monotonic() + 10
    while True:
        left = {"queued": r.zcard("vj:queue:colorize"), "leased": r.zcard("vj:leases"),
                "messages": r.llen("colorize"), "unacked": r.hlen("unacked")}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(left.values()), left
    print(f"\nburst: {JOBS} jobs from {CLIENTS} clients on 3 workers in {elapsed:.1f} s "
          f"({JOBS / elapsed:.1f} jobs/s); per worker {dict(per_worker)}")
