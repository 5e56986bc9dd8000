"""API keys -> tenants. Keys are compared by constant-time digest and never logged."""
from __future__ import annotations

import hashlib
import hmac
import re

ANONYMOUS = "anonymous"
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_api_keys(spec: str) -> dict[str, str]:
    """`key1,name2:key2` -> {key: tenant}. Unnamed keys get a tenant id derived from the key."""
    keys: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, key = item.partition(":")
        if not sep:
            name, key = "t_" + hashlib.sha256(item.encode()).hexdigest()[:12], item
        if not _TENANT_NAME.match(name):
            raise ValueError(f"VISIONJOBS_API_KEYS: tenant name {name!r} must match {_TENANT_NAME.pattern}")
        if len(key) < 16:
            raise ValueError(f"VISIONJOBS_API_KEYS: the key of tenant {name!r} is shorter than 16 characters")
        keys[key] = name
    return keys


class KeyRing:
    def __init__(self, keys: dict[str, str], allow_anonymous: bool):
        self._digests = [(hashlib.sha256(k.encode()).digest(), t) for k, t in keys.items()]
        self.anonymous = allow_anonymous and not keys

    def tenant_for(self, presented: str | None) -> str | None:
        if self.anonymous:
            return ANONYMOUS
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, tenant in self._digests:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(known, digest):
                found = tenant
        return found
