"""Where Redis is and how to reach it: the one place every Redis client is built.

The job store (sync and asyncio), the change listener, the rate limiter and the Celery broker
(API producer and workers) all connect through a RedisTarget, so Sentinel, TLS and ACL users
are set once (the redis_* settings, README "Redis: failover, TLS, ACL users").

- Plain: `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
- Sentinel: VISIONJOBS_REDIS_SENTINELS lists the sentinels; the primary of
  VISIONJOBS_REDIS_MASTER_NAME is asked of them on every new connection, so a failover is
  followed without a restart. The URL then gives only the scheme (TLS), database and credentials.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_TIMEOUT_S = 1.0  # a sentinel answers "who is the primary" in a millisecond; a dead one is skipped


@dataclass(frozen=True)
class RedisTarget:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_verify: bool = True
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = "visionjobs"
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_tls: bool = False

    @classmethod
    def from_url(cls, url: str, **overrides) -> "RedisTarget":
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"VISIONJOBS_REDIS_URL: scheme must be redis:// or rediss://, not {parts.scheme}://")
        db = parts.path.lstrip("/") or "0"
        base = dict(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=int(db),
                    username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None, tls=parts.scheme == "rediss")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @classmethod
    def from_settings(cls, settings) -> "RedisTarget":
        sentinels = tuple(parse_host_port(s) for s in settings.redis_sentinels.split(",") if s.strip())
        return cls.from_url(
            settings.redis_url or "redis://127.0.0.1:6379/0", username=settings.redis_username,
            password=settings.redis_password, ca_file=_str(settings.redis_tls_ca_file),
            cert_file=_str(settings.redis_tls_cert_file), key_file=_str(settings.redis_tls_key_file),
            tls_verify=settings.redis_tls_verify, sentinels=sentinels, master_name=settings.redis_master_name,
            sentinel_username=settings.redis_sentinel_username, sentinel_password=settings.redis_sentinel_password,
            sentinel_tls=settings.redis_sentinel_tls)

    # --- what redis-py needs ---
    def _ssl_kwargs(self) -> dict:
        return {"ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file,
                "ssl_cert_reqs": "required" if self.tls_verify else "none", "ssl_check_hostname": self.tls_verify}

    def _node_kwargs(self) -> dict:
        """Database, credentials and TLS of the primary (and of a plain server)."""
        kw = {"db": self.db, "username": self.username, "password": self.password}
        if self.tls:
            kw.update(ssl=True, **self._ssl_kwargs())
        return kw

    def _sentinel_kwargs(self) -> dict:
        kw = {"username": self.sentinel_username, "password": self.sentinel_password,
              "socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S}
        if self.sentinel_tls:
            kw.update(ssl=True, **self._ssl_kwargs())
        return kw

    def sync_client(self, **options) -> redis.Redis:
        """A redis-py client; `options`: timeouts, retry, decode_responses..."""
        if self.sentinels:
            return Sentinel(list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs()).master_for(
                self.master_name, redis_class=redis.Redis, **self._node_kwargs(), **options)
        return redis.Redis(host=self.host, port=self.port, **self._node_kwargs(), **options)

    def async_pool(self, **options) -> aioredis.ConnectionPool:
        """A redis.asyncio pool (max_connections etc. in `options`)."""
        if self.sentinels:
            return self._async_sentinel().master_for(self.master_name, redis_class=aioredis.Redis,
                                                     **self._node_kwargs(), **options).connection_pool
        kw = {**self._node_kwargs(), **options}
        if kw.pop("ssl", False):
            kw["connection_class"] = aioredis.SSLConnection
        return aioredis.ConnectionPool(host=self.host, port=self.port, **kw)

    def async_client(self, **options) -> aioredis.Redis:
        return aioredis.Redis(connection_pool=self.async_pool(**options))

    def _async_sentinel(self) -> AsyncSentinel:
        return AsyncSentinel(list(self.sentinels), sentinel_kwargs=self._sentinel_kwargs())

    # --- what Celery / kombu needs ---
    def celery_config(self) -> dict:
        """broker_url, transport options and TLS for the Celery broker (no result backend is used,
        but redis_backend_use_ssl is set alike should one be configured)."""
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        options: dict = {}
        if self.sentinels:
            # kombu reads the credentials of the first URL for the primary, the others only for their address
            url = ";".join(f"sentinel://{auth if i == 0 else ''}{h}:{p}/{self.db}"
                           for i, (h, p) in enumerate(self.sentinels))
            sentinel_kwargs = {k: v for k, v in self._sentinel_kwargs().items() if v is not None}
            options = {"master_name": self.master_name, "sentinel_kwargs": sentinel_kwargs}
        else:
            url = f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/{self.db}"
        config = {"broker_url": url, "broker_transport_options": options}
        if self.tls:
            tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED if self.tls_verify else ssl.CERT_NONE,
                   "ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
            config["broker_use_ssl"] = config["redis_backend_use_ssl"] = {k: v for k, v in tls.items()
                                                                           if v is not None}
        return config

    def describe(self) -> str:
        """For logs: where, without secrets."""
        where = (f"sentinels {','.join(f'{h}:{p}' for h, p in self.sentinels)} master {self.master_name}"
                 if self.sentinels else f"{self.host}:{self.port}")
        return f"{'rediss' if self.tls else 'redis'} {where} db {self.db}"


def parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"VISIONJOBS_REDIS_SENTINELS: {text.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


def as_target(where: "RedisTarget | str") -> RedisTarget:
    return where if isinstance(where, RedisTarget) else RedisTarget.from_url(where)


def _str(path) -> str | None:
    return str(path) if path else None
