"""Blocking work of the API process, off the event loop, in bounded pools per dependency.

One pool per thing that can stall, so a stalled S3 (every `storage` thread stuck) delays only
requests that need storage, never status reads, renders or queue sends:

    storage   object-store calls (boto3, local file I/O)
    queue     Celery sends (the broker is a socket too)
    dns       resolving webhook targets at submission
    egress    fetching URL inputs (service/url_inputs.py)
    cpu       decoding, rendering and serialising big jobs and pages, /metrics, archive checks
    decode    image decoding of uploads (their own pool: a flood of uploads leaves renders alone)
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

POOLS = {"storage": 16, "queue": 8, "dns": 4, "cpu": 4, "decode": 4, "egress": 4}


class Offload:
    def __init__(self, sizes: dict[str, int] | None = None):
        self.pools = {name: ThreadPoolExecutor(n, thread_name_prefix=f"vj-{name}")
                      for name, n in (sizes or POOLS).items()}

    async def __call__(self, pool: str, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pools[pool], partial(fn, *args, **kwargs))

    def executor(self, pool: str) -> ThreadPoolExecutor:
        return self.pools[pool]

    def shutdown(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
