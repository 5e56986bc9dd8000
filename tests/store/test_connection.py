"""One connection factory for every Redis client: a TLS-only redis-server with client
certificates and an ACL user serves the sync store, the async store (and its change listener),
the rate limiter's client and the Celery broker, all built from the same settings."""
from __future__ import annotations

import asyncio
import ssl

import pytest
import redis
import trustme

from service.core.config import Settings
from service.dispatch import CeleryDispatcher, celery_base_config
from service.store import build_job_store
from service.store.base import JobRecord, StoreUnavailable
from service.store.connection import RedisTarget
from tests.redis_servers import tls_server

USER, PASSWORD = "visionjobs-api", "acl-secret-0123"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    server = tls_server(tmp_path_factory.mktemp("tls-redis"), trustme.CA(), user=USER, password=PASSWORD)
    yield server
    server.stop()


def tls_settings(server, **over) -> Settings:
    p = server.paths
    return Settings(**{"redis_url": f"rediss://127.0.0.1:{server.port}/0", "redis_username": USER,
                       "redis_password": PASSWORD, "redis_tls_ca_file": p["ca.pem"],
                       "redis_tls_cert_file": p["client.pem"], "redis_tls_key_file": p["client.key"], **over})


def test_sync_and_async_store_and_broker_speak_tls_with_an_acl_user(tls):
    settings = tls_settings(tls)
    store = build_job_store(settings)
    job, created = store.create_job(JobRecord(id="job_tls", tenant="t", kind="colorize", params={"steps": 1}))
    assert created and store.get_job("job_tls").status == "queued"
    assert store.r.acl_whoami() == USER

    async def through_the_async_store():
        astore = store.open_async(pool_size=2)
        try:
            assert (await astore.read_job("job_tls")).id == "job_tls"
            assert await astore.redis.acl_whoami() == USER  # the rate limiter's client
            got = asyncio.Event()

            class Hub:
                stopping = False

                def publish(self, job_id, version, status):
                    got.set()

                def resync(self):
                    store.request_cancel("job_tls")  # a change once the listener is subscribed

                def unavailable(self):
                    pass

            hub = Hub()
            listener = asyncio.create_task(astore.listen(hub))
            await asyncio.wait_for(got.wait(), 10)  # the pub/sub connection is TLS too
            hub.stopping = True
            await asyncio.wait_for(listener, 5)
        finally:
            await astore.aclose()

    asyncio.run(through_the_async_store())

    # the Celery producer (API) reaches the broker over the same TLS, as the same user
    dispatcher = CeleryDispatcher(settings.redis_target())
    dispatcher.dispatch("job_tls", "colorize")
    assert tls.client().llen("colorize") == 1
    dispatcher.app.close()
    store.close()


def test_tls_is_verified_and_the_acl_user_is_required(tls):
    no_ca = build_job_store(tls_settings(tls, redis_tls_ca_file=None))
    with pytest.raises(StoreUnavailable, match="(?i)certificate"):
        no_ca.ping()  # the test CA is not a system CA: the handshake fails, nothing is sent in clear
    wrong_user = build_job_store(tls_settings(tls, redis_password="not-the-password"))
    with pytest.raises((redis.AuthenticationError, StoreUnavailable)):
        wrong_user.ping()
    plain = build_job_store(Settings(redis_url=f"redis://127.0.0.1:{tls.port}/0"))
    with pytest.raises(StoreUnavailable):
        plain.ping()  # a plain-text client cannot talk to the TLS port


def test_celery_gets_sentinels_tls_and_credentials_from_the_same_settings(tmp_path):
    settings = Settings(redis_url="rediss://:ignored@unused:1/3", redis_sentinels="10.0.0.1:26379, 10.0.0.2:26380",
                        redis_master_name="jobs", redis_username="api", redis_password="p@ss",
                        redis_sentinel_password="sentinel-pw", redis_sentinel_tls=True,
                        redis_tls_ca_file=tmp_path / "ca.pem")
    conf = celery_base_config(settings.redis_target(), 600)
    assert conf["broker_url"] == "sentinel://api:p%40ss@10.0.0.1:26379/3;sentinel://10.0.0.2:26380/3"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "jobs" and options["visibility_timeout"] == 600
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw" and options["sentinel_kwargs"]["ssl"] is True
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tmp_path / "ca.pem")}
    assert conf["redis_backend_use_ssl"] == conf["broker_use_ssl"]
    plain = celery_base_config(RedisTarget.from_url("redis://127.0.0.1:6390/2"), 60)
    assert plain["broker_url"] == "redis://127.0.0.1:6390/2" and "broker_use_ssl" not in plain
    assert settings.distributed and Settings(redis_sentinels="h:1").distributed and Settings().embedded
    with pytest.raises(ValueError, match="host:port"):
        Settings(redis_sentinels="nohost").redis_target()
