"""S3 object store against a real moto server on a free local port.

moto 5 does not verify presigned-URL signatures (it serves any `?X-Amz-Signature=...`), so the
server here wraps moto's WSGI app in a SigV4 query-signature check, as S3 and MinIO do. That
is what lets these tests prove a URL is bound to the host it was signed for.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from service.core.config import Settings
from service.storage import build_object_store
from service.storage.base import InvalidKey, ObjectNotFound
from service.storage.s3 import S3ObjectStore

from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, s3_server


@pytest.fixture(scope="module")
def s3_port():
    with s3_server() as port:
        yield port


def _store(port: int, bucket: str = "visionjobs-test") -> S3ObjectStore:
    # Internal and public endpoints are different host names for the same server, like
    # http://minio:9000 vs http://localhost:9000 in compose.
    return S3ObjectStore(
        bucket,
        endpoint_url=f"http://127.0.0.1:{port}",
        public_endpoint_url=f"http://localhost:{port}",
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )


@pytest.fixture(scope="module")
def store(s3_port) -> S3ObjectStore:
    s = _store(s3_port)
    s.ensure_bucket()
    s.ensure_bucket()  # idempotent
    return s


def test_put_get_exists(store):
    store.put("jobs/j1/out_0.png", b"\x89PNG bytes", "image/png")
    assert store.get("jobs/j1/out_0.png") == b"\x89PNG bytes"
    assert store.exists("jobs/j1/out_0.png")
    store.put("jobs/j1/out_0.png", b"replaced", "image/png")
    assert store.get("jobs/j1/out_0.png") == b"replaced"
    assert not store.exists("jobs/j1/missing.png")
    with pytest.raises(ObjectNotFound):
        store.get("jobs/j1/missing.png")
    store.ping()


def test_delete_prefix(store):
    for name in ("a.png", "b.png", "sub/c.png"):
        store.put(f"jobs/j2/{name}", b"x", "image/png")
    store.put("jobs/j20/a.png", b"keep", "image/png")
    assert store.delete_prefix("jobs/j2/") == 3
    assert not store.exists("jobs/j2/a.png")
    assert store.get("jobs/j20/a.png") == b"keep"
    assert store.delete_prefix("jobs/j2/") == 0


def test_invalid_keys_refused_before_any_request(store):
    for key in ("../x", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(InvalidKey):
            store.put(key, b"x", "text/plain")
        with pytest.raises(InvalidKey):
            store.signed_url(key, tenant="t", base_url="", ttl_s=60)
    with pytest.raises(InvalidKey):
        store.delete_prefix("jobs")


def test_presigned_url_for_public_host_downloads(store, s3_port):
    store.put("jobs/j3/out.webp", b"RIFF....WEBP", "image/webp")
    signed = store.signed_url("jobs/j3/out.webp", tenant="t", base_url="http://ignored", ttl_s=300)
    assert urlsplit(signed.url).netloc == f"localhost:{s3_port}"
    resp = httpx.get(signed.url)
    assert resp.status_code == 200, resp.text
    assert resp.content == b"RIFF....WEBP"
    assert resp.headers["content-type"] == "image/webp"


def test_presigned_url_tampering_refused(store, s3_port):
    store.put("jobs/j4/a.png", b"a", "image/png")
    store.put("jobs/j4/b.png", b"b", "image/png")
    url = store.signed_url("jobs/j4/a.png", tenant="t", base_url="", ttl_s=300).url
    parts = urlsplit(url)
    sig = parts.query.rsplit("X-Amz-Signature=", 1)[1]
    tampered = [
        # Rewriting the host afterwards (what signing with the internal client would need).
        urlunsplit(parts._replace(netloc=f"127.0.0.1:{s3_port}")),
        url.replace("jobs/j4/a.png", "jobs/j4/b.png"),  # another object
        url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"),  # longer life
        url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:]),
    ]
    assert httpx.get(url).status_code == 200
    for bad in tampered:
        assert bad != url
        assert httpx.get(bad).status_code == 403, bad


def test_presigned_lifetime_matches_ttl(store):
    before = time.time()
    signed = store.signed_url("jobs/j5/a.png", tenant="t", base_url="", ttl_s=120)
    assert "X-Amz-Expires=120&" in signed.url
    assert before + 120 <= signed.expires_at <= time.time() + 120
    # SigV4 caps presigned URLs at 7 days; a longer TTL would give URLs S3 refuses.
    week = store.signed_url("jobs/j5/a.png", tenant="t", base_url="", ttl_s=30 * 86400)
    assert "X-Amz-Expires=604800&" in week.url


def test_ping_missing_bucket_raises(s3_port):
    with pytest.raises(Exception):
        _store(s3_port, "no-such-bucket").ping()


def test_build_object_store_picks_s3(s3_port):
    settings = Settings(
        s3_bucket="visionjobs-test",
        s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
        s3_public_endpoint_url=f"http://localhost:{s3_port}",
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SECRET_KEY,
        redis_url="redis://unused",
    )
    store = build_object_store(settings)
    assert isinstance(store, S3ObjectStore)
    store.ping()
    store.put("jobs/j6/a.txt", b"hi", "text/plain")
    assert httpx.get(store.signed_url("jobs/j6/a.txt", tenant="t", base_url="", ttl_s=60).url).content == b"hi"
