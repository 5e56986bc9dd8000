"""GET /v1/kinds: what the service runs, and who runs it now."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class KindWorker(BaseModel):
    worker: str | None = Field(description="The worker's name (host:pid).")
    profile: str | None = Field(description="The model profile it runs the kind under: tiny | pretrained.")
    weights_fingerprint: str | None = Field(description="Digest of the weights it loads (jobs it finishes record it).")
    ready: bool = Field(description="False when its pretrained weights are missing (`missing` names them).")
    missing: list[str] = []
    features: dict[str, list[str]] = Field({}, description="Optional features: the files each lacks ([] = available).")


class KindInfo(BaseModel):
    name: str
    description: str
    path: str = Field(description="Where to POST a request of this kind.")
    queue: str
    input_schema: dict[str, Any] = Field(description="JSON schema of the request body (self-contained: `$defs`).")
    result_schema: dict[str, Any] = Field(description="JSON schema of the job's `result` once it succeeded.")
    workers: list[KindWorker] = Field(description="Live workers serving the kind (reports of the last two minutes).")


class KindList(BaseModel):
    items: list[KindInfo]
