"""Client settings from the environment (client-side variables, not server settings)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

URL_ENV = "VISIONJOBS_URL"
API_KEY_ENV = "VISIONJOBS_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientSettings:
    """Where the API is and the key to present.

    ``VISIONJOBS_URL`` (default ``http://127.0.0.1:8000``, the embedded ``visionjobs run``)
    and ``VISIONJOBS_API_KEY`` (default: none, for an anonymous embedded service).
    """

    url: str = DEFAULT_URL
    api_key: Optional[str] = None

    @classmethod
    def from_env(cls, url: Optional[str] = None, api_key: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None) -> "ClientSettings":
        """Explicit arguments win over the environment, which wins over the defaults."""
        env = os.environ if environ is None else environ
        return cls(url=(url or env.get(URL_ENV) or DEFAULT_URL).rstrip("/"),
                   api_key=api_key or env.get(API_KEY_ENV) or None)
