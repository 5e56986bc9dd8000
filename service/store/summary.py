"""What list pages show of a job's params: bulky values elided, so a page costs what it shows.

A job's params can be large (colorization strokes carry up to 20,000 points, about 0.5 MB of
JSON). List pages (GET /v1/jobs) show this summary instead; GET /v1/jobs/{id} has the full
params. Rules (also in the README): an array of more than MAX_ITEMS items becomes
`{"elided": "array", "length": n}`, a string longer than MAX_CHARS becomes
`{"elided": "string", "length": n}`, an object nested deeper than MAX_DEPTH becomes
`{"elided": "object", "keys": n}`. The webhook (its URL is at most 2048 characters) is kept
whole, its secret masked as everywhere else.
The Redis store writes the summary next to the params when the job is created, so a list page
never reads the params themselves.
"""
from __future__ import annotations

from typing import Any

MAX_ITEMS = 8
MAX_CHARS = 256
MAX_DEPTH = 4


def _summarize(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_CHARS else {"elided": "string", "length": len(value)}
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            return {"elided": "array", "length": len(value)}
        return [_summarize(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return {"elided": "object", "keys": len(value)}
        return {k: _summarize(v, depth + 1) for k, v in value.items()}
    return value


def summarize_params(params: dict[str, Any]) -> dict[str, Any]:
    out = _summarize({k: v for k, v in params.items() if k != "webhook"}, 0)
    if isinstance(params.get("webhook"), dict):
        out["webhook"] = {**params["webhook"], "secret": "***"}  # write-only
    elif "webhook" in params:
        out["webhook"] = params["webhook"]
    return out
