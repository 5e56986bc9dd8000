"""The Redis job store for the API's request path: redis.asyncio, one pool per process.

It drives the operations of redis_ops.py (the ones the sync store drives) and registers the
same Lua scripts. Connections are held only while a command runs: a long-poll or an event
stream holds none. Change notifications arrive on one pub/sub connection per process.
"""
from __future__ import annotations

import asyncio
import logging
import time

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from service.store import redis_lua, redis_store
from service.store.aio import AsyncJobStore, ChangeSink
from service.store.base import StoreUnavailable
from service.store.connection import RedisTarget, as_target
from service.store.redis_ops import Batch, Call, Compute, RedisOps, Script

log = logging.getLogger("visionjobs.store")
POOL_WAIT_S = 2.0  # a request waits this long for a free connection, then gets 503
SPARE = 8  # connections beyond pool_size for direct users of the client (the rate limiter's leases)
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
REPLICAS_TTL_S = 1.0  # how stale the count of the primary's replicas may be (a new one is waited for within it)


async def run_async(op, client, scripts, cpu=None) -> tuple[object, int]:
    """Drive one operation against a redis.asyncio client. Returns (result, commands sent)."""
    sent = 0
    try:
        step = next(op)
        while True:
            if isinstance(step, Call):
                answer = await getattr(client, step.name)(*step.args, **(step.kwargs or {}))
                sent += 1
            elif isinstance(step, Script):
                answer = await scripts[step.name](keys=[], args=list(step.args))
                sent += 1
            elif isinstance(step, Batch):
                pipe = client.pipeline(transaction=False)
                for c in step.calls:
                    getattr(pipe, c.name)(*c.args, **(c.kwargs or {}))
                answer = await pipe.execute()
                sent += len(step.calls)
            elif isinstance(step, Compute):
                if step.heavy:
                    answer = await asyncio.get_running_loop().run_in_executor(cpu, step.fn, *step.args)
                else:
                    answer = step.fn(*step.args)
            else:  # pragma: no cover - a programming error in an operation
                raise TypeError(f"unknown step {step!r}")
            step = op.send(answer)
    except StopIteration as done:
        return done.value, sent


class AsyncRedisJobStore(AsyncJobStore):
    recheck_s = 5.0

    def __init__(self, url: RedisTarget | str, *, prefix: str = "vj:", retention_s: int = 7 * 86400,
                 pool_size: int = 64, cpu=None, wait_replicas: int = 1, wait_timeout_ms: int = 1000):
        target = as_target(url)
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        options = dict(decode_responses=True, socket_connect_timeout=redis_store.CONNECT_TIMEOUT_S,
                       health_check_interval=30)
        # same failure policy as the sync store: one quick retry on a fresh connection, no retry of timeouts
        pool = target.async_pool(
            max_connections=pool_size + SPARE, socket_timeout=redis_store.SOCKET_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=(redis.ConnectionError,)), **options)
        self.r = aioredis.Redis(connection_pool=pool)
        # at most pool_size operations at once; the others queue here (up to POOL_WAIT_S). A semaphore
        # costs nothing while free, unlike redis-py's BlockingConnectionPool (a condition per command).
        self._slots = asyncio.Semaphore(pool_size)
        self._listen_client = target.async_client(**options)  # the one pub/sub connection
        self.p, self.retention_s, self.cpu, self.pool_size = prefix, retention_s, cpu, pool_size
        self.ops = RedisOps(prefix, retention_s)
        self._scripts = {name: self.r.register_script(src) for name, src in redis_lua.SCRIPTS.items()}
        self.commands_sent = 0
        self._replica_count, self._replicas_at = 0, -REPLICAS_TTL_S

    @property
    def redis(self):
        return self.r

    @property
    def prefix(self) -> str:
        return self.p

    async def _do(self, op):
        if self._slots.locked():
            try:
                async with asyncio.timeout(POOL_WAIT_S):
                    await self._slots.acquire()
            except TimeoutError:
                op.close()
                raise StoreUnavailable(f"all {self.pool_size} Redis connections busy for {POOL_WAIT_S:g} s") from None
        else:
            await self._slots.acquire()
        try:
            result, sent = await run_async(op, self.r, self._scripts, self.cpu)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            raise (redis_store.refusal(exc) or exc) from exc
        finally:
            self._slots.release()
        self.commands_sent += sent
        return result

    # --- jobs ---
    async def create_job(self, job, idempotency_key=None, fingerprint=""):
        return await self._do(self.ops.create_job(job, idempotency_key, fingerprint))

    async def find_idempotent(self, tenant, idempotency_key, fingerprint=""):
        return await self._do(self.ops.find_idempotent(tenant, idempotency_key, fingerprint))

    async def discard_job(self, job_id):
        return await self._do(self.ops.discard_job(job_id))

    async def get_job(self, job_id):
        return await self._do(self.ops.get_job(job_id))

    async def read_job(self, job_id):
        return await self._do(self.ops.read_job(job_id))

    async def list_jobs(self, tenant, *, kind=None, status=None, cursor=None, limit=20):
        return await self._do(self.ops.list_jobs(tenant, kind=kind, status=status, cursor=cursor, limit=limit))

    async def queue_position(self, job):
        return await self._do(self.ops.queue_position(job))

    async def queue_positions(self, jobs):
        return await self._do(self.ops.queue_positions(jobs))

    async def request_cancel(self, job_id):
        return await self._do(self.ops.request_cancel(job_id))

    async def active_jobs(self, tenant):
        return await self._do(self.ops.active_jobs(tenant))

    async def mark_dispatched(self, job_id, ttl_s):
        await self._do(self.ops.mark_dispatched(job_id, ttl_s))

    async def mark_accepted(self, job_id, ttl_s):
        replicas = min(self.wait_replicas, await self._replicas()) if self.wait_replicas else 0
        if not replicas:  # a lone primary: nothing to wait for (AOF everysec is its only durability)
            await self.mark_dispatched(job_id, ttl_s)
            return True
        acked = await self._do(self.ops.mark_replicated(job_id, ttl_s, replicas, self.wait_timeout_ms))
        if acked < replicas:
            log.error("job %s reached %d of %d replicas within %d ms", job_id, acked, replicas, self.wait_timeout_ms)
            self._replicas_at = 0.0  # look again: a replica may have gone
        return acked >= replicas

    async def _replicas(self) -> int:
        """Replicas connected to the primary, looked up at most every REPLICAS_TTL_S per process."""
        now = time.monotonic()
        if now - self._replicas_at > REPLICAS_TTL_S:
            self._replica_count = await self._do(self.ops.connected_replicas())
            self._replicas_at = now
        return self._replica_count

    async def withdraw(self, job_id, tenant, idempotency_key):
        await self._do(self.ops.withdraw(job_id, tenant, idempotency_key))

    async def versions(self, job_ids):
        return await self._do(self.ops.versions(list(job_ids)))

    # --- uploads, resources, capabilities ---
    async def put_upload(self, upload):
        await self._do(self.ops.put_upload(upload))

    async def get_upload(self, upload_id):
        return await self._do(self.ops.get_upload(upload_id))

    async def put_resource(self, kind, resource_id, tenant, doc):
        await self._do(self.ops.put_resource(kind, resource_id, tenant, doc))

    async def get_resource(self, kind, resource_id):
        return await self._do(self.ops.get_resource(kind, resource_id))

    async def list_resources(self, kind, tenant, cursor=None, limit=None):
        return await self._do(self.ops.list_resources(kind, tenant, cursor, limit))

    async def charge_bytes(self, tenant, ledger, item, nbytes, ttl_s, limit):
        return await self._do(self.ops.charge_bytes(tenant, ledger, item, nbytes, ttl_s, limit))

    async def bytes_used(self, tenant, ledger):
        return await self._do(self.ops.bytes_used(tenant, ledger))

    async def release_bytes(self, tenant, ledger, item):
        return await self._do(self.ops.release_bytes(tenant, ledger, item))

    async def update_resource(self, kind, resource_id, tenant, doc):
        return await self._do(self.ops.update_resource(kind, resource_id, tenant, doc))

    async def delete_resource(self, kind, resource_id):
        return await self._do(self.ops.delete_resource(kind, resource_id))

    async def get_capabilities(self, kind, max_age_s=120.0):
        return await self._do(self.ops.get_capabilities(kind, max_age_s))

    # --- operations ---
    async def ping(self):
        await self._do(self.ops.ping())

    async def check_writable(self):
        await self._do(self.ops.check_writable())

    async def listen(self, hub: ChangeSink) -> None:
        """Subscribe to the changes channel; after every (re)subscription the hub re-checks
        everything, since what was published meanwhile is lost. Ends within a second of
        hub.shutdown() too: a cancel that lands inside redis-py's read timeout can be taken
        for the timeout and lost."""
        delay = 0.1
        while not getattr(hub, "stopping", False):
            pubsub = self._listen_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.ops.changes_channel)
                hub.resync()
                delay = 0.1
                while not getattr(hub, "stopping", False):
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    job_id, version, status = (message["data"].split(" ") + ["", ""])[:3]
                    try:
                        hub.publish(job_id, int(version), status)
                    except ValueError:
                        log.warning("ignored a malformed change notification %r", message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarted: end the waits, resubscribe with backoff
                log.warning("change listener lost Redis (%s); resubscribing in %.1f s", exc, delay)
                hub.unavailable()
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - closing a dead connection may fail too
                    pass

    async def aclose(self):
        await self.r.aclose(close_connection_pool=True)
        await self._listen_client.aclose(close_connection_pool=True)
