"""The web console: static files under service/console/, served at /console.

No build step: plain HTML, CSS and ES modules. Only the files that exist in that folder when
the app starts are served (a fixed table, so no request path ever reaches the filesystem).
The console talks to the same API with the key the user pastes; these routes need no key and
stay out of the OpenAPI document.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.core.errors import not_found

router = APIRouter(tags=["console"], include_in_schema=False)

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# Result URLs may live on an S3 endpoint of another origin: images and media may load from
# anywhere; scripts, styles and API calls only from here.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src * data: blob:; media-src * blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag) so an upgraded service serves its new console
}


def _files() -> dict[str, Path]:
    if not CONSOLE_DIR.is_dir():
        return {}
    return {p.relative_to(CONSOLE_DIR).as_posix(): p for p in sorted(CONSOLE_DIR.rglob("*"))
            if p.is_file() and p.suffix in MEDIA_TYPES and not p.name.startswith(".")}


FILES = _files()


def _serve(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise not_found("file")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.api_route("/console", methods=["GET", "HEAD"])
async def console_root() -> RedirectResponse:
    return RedirectResponse("console/", status_code=308)  # relative: works behind a path prefix


@router.api_route("/console/", methods=["GET", "HEAD"])
async def console_index() -> FileResponse:
    return _serve("index.html")


@router.api_route("/console/{name:path}", methods=["GET", "HEAD"])
async def console_file(name: str) -> FileResponse:
    return _serve(name)
