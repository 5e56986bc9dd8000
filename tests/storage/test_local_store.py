"""Local object store: round trips, traversal refusal, signed URL verification."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from service.core.config import Settings
from service.storage import LocalObjectStore, build_object_store, load_or_create_secret
from service.storage.base import InvalidKey, ObjectNotFound

SECRET = b"test-secret"


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", SECRET)


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_round_trip_and_content_type(store):
    store.put("jobs/j1/out_0.png", b"\x89PNG data", "image/png")
    assert store.get("jobs/j1/out_0.png") == b"\x89PNG data"
    assert store.exists("jobs/j1/out_0.png")
    assert store.content_type("jobs/j1/out_0.png") == "image/png"
    assert store.open_path("jobs/j1/out_0.png").read_bytes() == b"\x89PNG data"
    # The sidecar wins over the extension: uploads have no extension at all.
    store.put("uploads/t/u1", b"x", "image/webp")
    assert store.content_type("uploads/t/u1") == "image/webp"
    store.ping()


def test_missing_object(store):
    assert not store.exists("jobs/nope/a.png")
    with pytest.raises(ObjectNotFound):
        store.get("jobs/nope/a.png")
    with pytest.raises(ObjectNotFound):
        store.open_path("jobs/nope/a.png")
    with pytest.raises(ObjectNotFound):
        store.get("jobs")  # a directory is not an object


def test_overwrite_same_key_leaves_no_temp_files(store):
    store.put("jobs/j1/out.png", b"first", "image/png")
    store.put("jobs/j1/out.png", b"second", "image/jpeg")
    assert store.get("jobs/j1/out.png") == b"second"
    assert store.content_type("jobs/j1/out.png") == "image/jpeg"
    assert sorted(p.name for p in (store.root / "jobs/j1").iterdir()) == ["out.png"]


def test_delete_prefix(store):
    for name in ("a.png", "b.png", "sub/c.png"):
        store.put(f"jobs/j1/{name}", b"x", "image/png")
    store.put("jobs/j10/a.png", b"keep", "image/png")  # shares the string prefix "jobs/j1"
    assert store.delete_prefix("jobs/j1/") == 3
    assert not store.exists("jobs/j1/a.png") and not store.exists("jobs/j1/sub/c.png")
    assert store.get("jobs/j10/a.png") == b"keep"
    assert store.delete_prefix("jobs/j1/") == 0
    with pytest.raises(InvalidKey):
        store.delete_prefix("jobs/j10")  # must end with '/'


@pytest.mark.parametrize(
    "key", ["../x", "/etc/passwd", "a/../../b", "a//b", "..", "a/./b", ".meta/jobs/x", "", "a\\..\\b", "a/b\x00"]
)
def test_traversal_refused_everywhere(store, key):
    for call in (
        lambda: store.put(key, b"x", "text/plain"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.open_path(key),
        lambda: store.content_type(key),
        lambda: store.signed_url(key, tenant="t", base_url="http://h", ttl_s=60),
        lambda: store.delete_prefix(key + "/"),
    ):
        with pytest.raises(InvalidKey):
            call()
    assert store.verify(key, 2**40, "t", "0" * 64) is False


def test_symlink_pointing_outside_is_refused(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (store.root / "jobs").mkdir()
    (store.root / "jobs" / "leak").symlink_to(outside)  # directory link
    (store.root / "jobs" / "file.txt").symlink_to(outside / "secret.txt")  # file link
    for key in ("jobs/leak/secret.txt", "jobs/file.txt"):
        with pytest.raises(InvalidKey):
            store.open_path(key)
        with pytest.raises(InvalidKey):
            store.get(key)
    with pytest.raises(InvalidKey):
        store.put("jobs/leak/new.txt", b"x", "text/plain")
    with pytest.raises(InvalidKey):
        store.delete_prefix("jobs/leak/")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_symlink_pointing_inside_is_served(store):
    store.put("jobs/j1/a.png", b"inside", "image/png")
    (store.root / "jobs" / "alias").symlink_to(store.root / "jobs" / "j1")
    assert store.get("jobs/alias/a.png") == b"inside"


def test_signed_url_verifies(store):
    signed = store.signed_url("jobs/j1/a.png", tenant="acme corp", base_url="http://api:8000/", ttl_s=60)
    parts = urlsplit(signed.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "api:8000", "/v1/files/jobs/j1/a.png")
    q = _query(signed.url)
    assert q["tenant"] == "acme corp" and int(q["expires"]) == signed.expires_at
    assert store.verify("jobs/j1/a.png", int(q["expires"]), q["tenant"], q["signature"])


def test_signature_tamper_expiry_and_tenant(store, tmp_path):
    signed = store.signed_url("jobs/j1/a.png", tenant="t1", base_url="http://h", ttl_s=60)
    q = _query(signed.url)
    exp, sig = int(q["expires"]), q["signature"]
    flipped = ("1" if sig[0] == "0" else "0") + sig[1:]
    assert not store.verify("jobs/j1/a.png", exp, "t1", flipped)
    assert not store.verify("jobs/j1/a.png", exp, "t2", sig)  # another tenant
    assert not store.verify("jobs/j1/b.png", exp, "t1", sig)  # another key
    assert not store.verify("jobs/j1/a.png", exp + 3600, "t1", sig)  # extended expiry
    assert not store.verify("jobs/j1/a.png", exp, "t1", sig, now=exp)  # expired
    assert store.verify("jobs/j1/a.png", exp, "t1", sig, now=exp - 1)
    assert not store.verify("jobs/j1/a.png", exp, "t1", sig.upper())
    assert not store.verify("jobs/j1/a.png", exp, "t1", "é" * 64)  # non-ASCII must not raise
    assert not store.verify("jobs/j1/a.png", "soon", "t1", sig)
    other = LocalObjectStore(tmp_path / "other", b"another-secret")
    assert not other.verify("jobs/j1/a.png", exp, "t1", sig)


def _settings(tmp_path, **kw):
    # Explicit values so VISIONJOBS_* variables in the environment cannot leak in.
    base = dict(s3_bucket=None, data_dir=tmp_path, signing_secret=None, redis_url=None)
    return Settings(**{**base, **kw})


def test_build_local_store_persists_generated_secret(tmp_path):
    first = build_object_store(_settings(tmp_path))
    assert isinstance(first, LocalObjectStore) and first.root == (tmp_path / "objects").resolve()
    secret_file = tmp_path / ".signing_secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    signed = first.signed_url("jobs/j/a.png", tenant="t", base_url="http://h", ttl_s=60)
    q = _query(signed.url)
    # A restarted process (new store, same data dir) accepts URLs signed before.
    again = build_object_store(_settings(tmp_path))
    assert again.verify("jobs/j/a.png", int(q["expires"]), "t", q["signature"])
    assert load_or_create_secret(secret_file) == secret_file.read_bytes().strip()


def test_build_local_store_configured_secret(tmp_path):
    store = build_object_store(_settings(tmp_path, signing_secret="s3cr3t", redis_url="redis://x"))
    assert not (tmp_path / ".signing_secret").exists()
    signed = store.signed_url("jobs/j/a.png", tenant="t", base_url="http://h", ttl_s=60)
    q = _query(signed.url)
    assert LocalObjectStore(tmp_path / "x", b"s3cr3t").verify("jobs/j/a.png", int(q["expires"]), "t", q["signature"])
    with pytest.raises(RuntimeError, match="SIGNING_SECRET"):
        build_object_store(_settings(tmp_path, redis_url="redis://x"))
