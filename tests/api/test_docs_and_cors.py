"""/docs works offline (its assets are served by the API), `/` leads to the console, and CORS is
opt-in: no CORS headers by default, an allow-list of origins when set."""
from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from tests.helpers import KEYS


def make_client(tmp_path, **settings):
    ctx = build_context(Settings(data_dir=tmp_path, api_keys=KEYS, redis_url=None, s3_bucket=None, **settings))
    return TestClient(create_app(ctx, run_reaper=False))


def test_docs_load_every_asset_from_the_api_itself(tmp_path):
    with make_client(tmp_path) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # no CDN, no other host
        for url in urls:
            r = c.get(url)
            assert r.status_code == 200 and r.content, url
        assert c.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(("text/javascript",
                                                                                              "application/javascript"))
        assert c.get("/redoc").status_code == 404  # (its assets come from a CDN: not offered)


def test_root_redirects_to_the_console(tmp_path):
    with make_client(tmp_path) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/console"


def test_cors_is_off_by_default_and_an_allow_list_when_set(tmp_path):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with make_client(tmp_path) as c:
        r = c.options("/v1/colorizations", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://app.example.com"}).headers
    with make_client(tmp_path / "b", cors_origins="https://app.example.com, https://other.example.org/") as c:
        r = c.options("/v1/colorizations", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.get("/healthz", headers={"Origin": "https://other.example.org"})
        assert r.headers["access-control-allow-origin"] == "https://other.example.org"
        r = c.options("/v1/colorizations", headers={**preflight, "Origin": "https://evil.example.net"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example.net"
        r = c.post("/v1/jobs/job_x/cancel", headers={"Origin": "https://app.example.com"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example.com"
