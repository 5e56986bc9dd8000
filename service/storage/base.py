"""Object storage for uploads and job outputs.

Keys are plain relative paths: `uploads/{tenant}/{upload_id}` and `jobs/{job_id}/{name}`.
Outputs of one job always go to the same keys, so a re-run overwrites instead of duplicating.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")


class InvalidKey(ValueError):
    pass


class ObjectNotFound(KeyError):
    pass


def check_key(key: str) -> str:
    """Reject anything that is not a plain relative path (no '..', no absolute, no '//')."""
    if not isinstance(key, str) or len(key) > 512 or not KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise InvalidKey(f"invalid object key: {key!r}")
    return key


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: float  # epoch seconds


class ObjectStore(abc.ABC):
    # every method may block (disk, network): the API calls them in a pool thread. signed_url is
    # pure computation unless this is True (S3: a credentials refresh may go to the network)
    sign_may_block = False

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Raise ObjectNotFound when absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete one object; False when it was not there."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (which must end with '/'); return the count."""

    @abc.abstractmethod
    def signed_url(self, key: str, *, tenant: str, base_url: str, ttl_s: int) -> SignedUrl:
        """An absolute, expiring GET URL. `base_url` is the API's public base (local store);
        S3 ignores it and signs for its public endpoint."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise when the store cannot be reached (used by /readyz)."""
