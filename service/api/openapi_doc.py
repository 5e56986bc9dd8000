"""The published contract: every error a route can answer is documented as RFC 9457
application/problem+json (FastAPI documents only 422, as application/json)."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.schemas import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
DESCRIPTIONS = {401: "Missing or unknown API key", 404: "Not found (or another tenant's)",
                413: "Request body too large", 415: "Unsupported media type", 422: "Invalid request (fields named)",
                429: "Rate limit, job quota or open-wait cap exceeded (Retry-After)", 503: "Job store or queue unavailable (Retry-After)"}
SSE_ITEM = {"type": "object", "required": ["data"], "properties": {
    "event": {"enum": ["job", "log", "gone"]}, "id": {"type": "string"},
    "data": {"type": "string", "contentMediaType": "application/json"}}}


def _problem(code: int) -> dict:
    return {"description": DESCRIPTIONS[code], "content": {"application/problem+json": {"schema": PROBLEM_REF}}}


def _input_paths() -> set[str]:
    """Submission routes whose bodies take URL or data: inputs (fetched: a 415 when the content
    is not an accepted type, as for an upload)."""
    import importlib

    from service.kinds import KINDS

    out = set()
    for kind in KINDS.values():
        if kind.request:
            module, _, name = kind.request.partition(":")
            if getattr(getattr(importlib.import_module(module), name), "INPUTS", ()):
                out.add(kind.path)
    return out


def build_openapi(app: FastAPI) -> dict:
    input_paths = _input_paths()
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            codes = set()
            if path.startswith("/v1/") and not path.startswith("/v1/files/"):
                codes |= {401, 429, 503}
            if "{" in path:
                codes.add(404)
            if op.get("parameters") or "requestBody" in op:
                codes.add(422)
            if "requestBody" in op:
                codes.add(413)
            if method == "post" and (path == "/v1/uploads" or path in input_paths):
                codes.add(415)
            if path in ("/readyz",):
                codes.add(503)
            for code in sorted(codes):
                responses[str(code)] = _problem(code)
            if method == "post" and "202" in responses:  # a repeated Idempotency-Key answers the first job
                responses["200"] = {"description": "The job an earlier request with this Idempotency-Key made",
                                    "content": responses["202"]["content"]}
    files = spec["paths"]["/v1/files/{key}"]["get"]["responses"]["200"]
    files["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    events["content"] = {"text/event-stream": {"itemSchema": SSE_ITEM}}
    return spec


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi
