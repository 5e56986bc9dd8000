"""Client and CLI tests. One embedded service (`visionjobs run`, tiny models, two API keys)
is started as a subprocess for the whole session and shared by the live tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

try:  # installed by `make` (pip install -e ./client); from the source tree otherwise
    import visionjobs_client  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT / "client"))


class Service:
    def __init__(self, url: str, proc, data_dir: Path):
        self.url, self.proc, self.data_dir = url, proc, data_dir

    def client(self, key: str | None = None, **kw):
        from visionjobs_client import Client
        from tests.helpers import ALICE

        return Client(self.url, api_key=key or ALICE, **kw)

    def aclient(self, key: str | None = None, **kw):
        from visionjobs_client import AsyncClient
        from tests.helpers import ALICE

        return AsyncClient(self.url, api_key=key or ALICE, **kw)


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """`python -m visionjobs.cli run` with a clean env: tiny profile, keys for alice and bob."""
    from tests.conftest import free_port
    from tests.helpers import KEYS
    from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_http

    tmp = tmp_path_factory.mktemp("client-service")
    port = free_port()
    env = clean_env(VISIONJOBS_MODEL_PROFILE="tiny", VISIONJOBS_API_KEYS=KEYS, VISIONJOBS_PROGRESS_INTERVAL_S="0.05",
                    VISIONJOBS_WEBHOOK_ALLOW_HOSTS="127.0.0.1",  # the webhook test's receiver is local
                    VISIONJOBS_URL_INPUT_ALLOW_HOSTS="127.0.0.1")  # and so is the URL input test's file server
    proc = Proc([*VISIONJOBS, "run", "--port", str(port), "--data-dir", str(tmp / "data")], env, tmp / "service.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield Service(f"http://127.0.0.1:{port}", proc, tmp / "data")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def spec() -> dict:
    import json

    return json.loads((ROOT / "openapi" / "openapi.json").read_text())


def route_absent(spec: dict, path: str) -> bool:
    return path not in spec.get("paths", {})


@pytest.fixture
def receiver():
    """A local HTTP endpoint recording the webhook deliveries it gets: (headers, raw body)."""
    import http.server
    import threading

    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.got = got
    yield server
    server.shutdown()
    server.server_close()
