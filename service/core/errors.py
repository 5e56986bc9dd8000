"""One error type for the HTTP layer, rendered as RFC 9457 problem+json."""
from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.store.base import StoreFull, StoreUnavailable

PROBLEM = "application/problem+json"
STORE_FULL_RETRY_S = 30  # an operator has to act (memory, disk): slower than a reconnect
MAX_LISTED_ERRORS = 50  # a 422 lists the first ones and counts them all (`errors_total`)
log = logging.getLogger("visionjobs.api")


class ApiError(Exception):
    def __init__(self, status: int, title: str, detail: str = "", *, code: str | None = None,
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.code = code or title.lower().replace(" ", "_")
        self.errors, self.headers = errors, headers


def field_error(field: str, message: str, status: int = 422, **extra) -> ApiError:
    """A validation problem naming one field (and its limit, when there is one)."""
    return ApiError(status, "Invalid request", f"{field}: {message}", code="validation_error",
                    errors=[{"field": field, "message": message, **extra}])


def not_found(what: str) -> ApiError:
    return ApiError(404, "Not found", f"no {what} with this id", code="not_found")


def problem(request: Request, status: int, title: str, detail: str, code: str,
            errors=None, headers=None, errors_total: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://visionjobs.dev/problems/{code}", "title": title,
                            "status": status, "detail": detail, "instance": request.url.path, "code": code}
    if errors is not None:
        body["errors"] = errors
        body["errors_total"] = len(errors) if errors_total is None else errors_total
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


_FIELD_PART = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes", "union"})


def _loc_to_field(loc) -> str:
    """The request field of a pydantic error location. Union members add the member's schema to
    the location (`literal['a','b']`, `ColorizationParity`, `function-after[...]`): those are
    Python names, not fields, and are left out."""
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif p not in ("body", "query", "path", "header") and _FIELD_PART.fullmatch(p) and p not in _TYPE_NAMES:
            parts.append(p)
    return ".".join(parts) or "body"


# A model-level validator names the field it is about at the start of its message ("source_prompt:
# describe the clip", "prompts[2]: ...", "a, b: fixed ..."): the problem then names that field
# (below the model's own location), not the model, and drops pydantic's "Value error, " prefix.
_NAMED = re.compile(r"^([A-Za-z_]\w*(?:\.\w+|\[\d+\])*)((?:, [A-Za-z_]\w*)*): (.+)$", re.DOTALL)


def _field_and_message(err: dict) -> tuple[str, str]:
    field, message = _loc_to_field(err.get("loc", ())), err.get("msg", "")
    if err.get("type") != "value_error":
        return field, message
    message = message.removeprefix("Value error, ")
    named = _NAMED.match(message)
    if named:
        inner = re.sub(r"\[(\d+)\]", r".\1", named.group(1))
        field = inner if field == "body" else f"{field}.{inner}"
        message = (f"(also {named.group(2)[2:]}) " if named.group(2) else "") + named.group(3)
    return field, message


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return problem(request, exc.status, exc.title, exc.detail, exc.code, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # one entry per invalid item could be 100,000 entries for a 1 MB body: list the first
        # MAX_LISTED_ERRORS (work and response size bounded), count the rest
        found = exc.errors()
        errors, seen = [], set()
        for err in found[:MAX_LISTED_ERRORS]:
            if err.get("type") == "json_invalid":
                field, message = "body", err.get("msg", "")
            else:
                field, message = _field_and_message(err)
            item = {"field": field, "message": message, "type": err.get("type")}
            if (field, message) in seen:  # the same problem seen through two union members
                continue
            seen.add((field, message))
            ctx = err.get("ctx") or {}
            for key in ("le", "ge", "lt", "gt", "max_length", "min_length"):
                if key in ctx:
                    item["limit"] = ctx[key] if isinstance(ctx[key], (int, float, str)) else str(ctx[key])
            errors.append(item)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        if len(found) > len(errors):
            detail += f" (and {len(found) - len(errors)} more)"
        return problem(request, 422, "Invalid request", detail, "validation_error", errors, errors_total=len(found))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "There was an error parsing the body": a body problem like any other
            return problem(request, 422, "Invalid request", f"body: {exc.detail}", "validation_error",
                           [{"field": "body", "message": str(exc.detail)}])
        title = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized",
                 413: "Payload too large"}.get(exc.status_code, "HTTP error")
        return problem(request, exc.status_code, title, str(exc.detail),
                       getattr(exc, "code", None) or title.lower().replace(" ", "_"),
                       errors=getattr(exc, "errors", None), headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreFull)
    async def _full(request: Request, exc: StoreFull):
        log.error("job store refuses writes: %s", exc)
        return problem(request, 503, "Service unavailable", "the job store refuses writes now (it is full); "
                       "retry later", "store_full", headers={"Retry-After": str(STORE_FULL_RETRY_S)})

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable):
        log.warning("job store unavailable: %s", exc)
        return problem(request, 503, "Service unavailable", "the job store cannot be reached; retry shortly",
                       "store_unavailable", headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem(request, 500, "Internal error", "an unexpected error occurred", "internal_error")
