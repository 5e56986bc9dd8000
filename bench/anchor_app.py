"""The anchor of bench/service.py's status reads: the least a FastAPI app can do for one.

`GET /v1/jobs/{job_id}`: one Redis HGETALL of the job's hash with redis.asyncio, returned as
JSON. Nothing else: no auth, no rate limit, no rendering. bench/service.py serves it with the
same uvicorn settings as `visionjobs api`, in the same run, against the same Redis and job,
and prints the service's requests/s as a ratio of this app's.

    BENCH_ANCHOR_REDIS_URL=redis://127.0.0.1:6379/12 python bench/anchor_app.py --port 8001
"""
from __future__ import annotations

import argparse
import os

import redis.asyncio as aioredis
from fastapi import FastAPI

PREFIX = "vj:"  # the service's key prefix
app = FastAPI()
_redis = aioredis.Redis.from_url(os.environ.get("BENCH_ANCHOR_REDIS_URL", "redis://127.0.0.1:6379/12"),
                                 decode_responses=True)


@app.get("/v1/jobs/{job_id}")
async def get_job(job_id: str) -> dict:
    return await _redis.hgetall(f"{PREFIX}job:{job_id}")


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    # the options `visionjobs api` passes (visionjobs/cli.py)
    uvicorn.run("bench.anchor_app:app", host="127.0.0.1", port=args.port, log_level="info",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
