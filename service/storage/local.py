"""Local filesystem object store: the embedded default.

Objects live at `root/<key>`; content types in a parallel `root/.meta/<key>` tree. Keys can
never start a segment with '.', so neither the meta tree nor temp files can be addressed as
objects. The API serves objects at HMAC-signed, expiring URLs checked by `verify`.
"""
from __future__ import annotations

import hashlib
import hmac
import mimetypes
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from service.storage.base import InvalidKey, ObjectNotFound, ObjectStore, SignedUrl, check_key

_META = ".meta"
_HEX_SIG = re.compile(r"[0-9a-f]{64}")


class LocalObjectStore(ObjectStore):
    def __init__(self, root: Path, secret: bytes):
        if not secret:
            raise ValueError("LocalObjectStore needs a non-empty signing secret")
        Path(root).mkdir(parents=True, exist_ok=True)
        # Resolved once: later cwd changes or a symlinked data dir cannot move the root.
        self.root = Path(root).resolve()
        self._secret = bytes(secret)

    # --- paths -------------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        # resolve() follows every symlink on the way, so a link (file or directory) that
        # points outside the root is caught here, not only literal '..'.
        real = path.resolve()
        if real != self.root and not real.is_relative_to(self.root):
            raise InvalidKey(f"object path escapes the store root: {path}")
        return path

    def _data_path(self, key: str) -> Path:
        return self._inside(self.root / check_key(key))

    def _meta_path(self, key: str) -> Path:
        return self._inside(self.root / _META / check_key(key))

    def open_path(self, key: str) -> Path:
        """The file holding `key`, for streaming responses. Raise InvalidKey for any key or
        symlink that would leave the root, ObjectNotFound when absent."""
        path = self._data_path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def content_type(self, key: str) -> str:
        try:
            return self._meta_path(key).read_text().strip() or "application/octet-stream"
        except (FileNotFoundError, NotADirectoryError):
            guessed, _ = mimetypes.guess_type(key)
            return guessed or "application/octet-stream"

    # --- ObjectStore ---------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._write(self._meta_path(key), content_type.encode())
        self._write(self._data_path(key), data)

    def _write(self, path: Path, data: bytes) -> None:
        # temp file in the same directory + os.replace: readers see the old or the new
        # object, never a torn one, and a crash leaves at most a stray dot-file.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise InvalidKey(f"key conflicts with an existing object: {path}") from e
        self._inside(path.parent)  # re-check: a link may have been swapped in meanwhile
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._data_path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._data_path(key).is_file()

    def delete(self, key: str) -> bool:
        data = self._data_path(key)
        if not data.is_file() or data.is_symlink():
            return False
        data.unlink()
        self._meta_path(key).unlink(missing_ok=True)
        return True

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise InvalidKey(f"prefix must end with '/': {prefix!r}")
        data, meta = self._data_path(prefix[:-1]), self._meta_path(prefix[:-1])
        count = 0
        if data.is_dir() and not data.is_symlink():
            count = sum(1 for p in data.rglob("*") if p.is_file() and not p.name.startswith("."))
        for tree in (data, meta):
            if tree.is_symlink():  # only links pointing inside get here; drop the link only
                tree.unlink()
            elif tree.is_dir():
                shutil.rmtree(tree)
        return count

    def signed_url(self, key: str, *, tenant: str, base_url: str, ttl_s: int) -> SignedUrl:
        check_key(key)
        expires = int(time.time()) + int(ttl_s)
        sig = self._sign(key, expires, tenant)
        url = (
            f"{base_url.rstrip('/')}/v1/files/{key}"
            f"?expires={expires}&tenant={quote(tenant, safe='')}&signature={sig}"
        )
        return SignedUrl(url=url, expires_at=float(expires))

    def verify(self, key: str, expires: int, tenant: str, signature: str, now: float | None = None) -> bool:
        """True when `signature` was made by this store for (key, expires, tenant) and has
        not expired. Never raises on hostile input."""
        try:
            check_key(key)
            expires = int(expires)
        except (InvalidKey, TypeError, ValueError):
            return False
        if not isinstance(signature, str) or not _HEX_SIG.fullmatch(signature):
            return False
        if (time.time() if now is None else now) >= expires:
            return False
        return hmac.compare_digest(self._sign(key, expires, tenant), signature)

    def _sign(self, key: str, expires: int, tenant: str) -> str:
        # Newline separators are unambiguous: keys and the integer cannot contain one, and
        # the tenant comes last.
        msg = f"{key}\n{expires}\n{tenant}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(f"object store root is not a writable directory: {self.root}")
