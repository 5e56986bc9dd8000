"""Object storage: pick the implementation from settings.

`service.storage.s3` (and so boto3) is imported only when S3 is configured, which keeps the
embedded start-up light.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from service.storage.base import InvalidKey, ObjectNotFound, ObjectStore, SignedUrl, check_key
from service.storage.local import LocalObjectStore

__all__ = [
    "InvalidKey",
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "SignedUrl",
    "build_object_store",
    "check_key",
    "load_or_create_secret",
]


def build_object_store(settings) -> ObjectStore:
    """S3 when `settings.s3_bucket` is set, else the local store under data_dir/objects."""
    if settings.s3_bucket:
        from service.storage.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    data_dir = Path(settings.data_dir)
    if settings.signing_secret:
        secret = settings.signing_secret.encode()
    elif settings.embedded:
        secret = load_or_create_secret(data_dir / ".signing_secret")
    else:
        # API and workers on other hosts must agree on the secret; a per-host random one
        # would make every URL signed elsewhere fail.
        raise RuntimeError("VISIONJOBS_SIGNING_SECRET is required outside embedded mode")
    return LocalObjectStore(data_dir / "objects", secret)


def load_or_create_secret(path: Path) -> bytes:
    """Read the persisted secret, or create it (0600) so signed URLs survive restarts."""
    path = Path(path)
    try:
        secret = path.read_bytes().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    # O_EXCL + mode at creation: the secret is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    try:
        # link() fails if another process created the file first: then use theirs, so two
        # processes starting together end up with the same secret.
        os.link(tmp, path)
    except FileExistsError:
        secret = path.read_bytes().strip()
    finally:
        os.unlink(tmp)
    return secret
