"""Web console tests: headless Chromium (Debian's `chromium`, driven by Playwright for Python)
against a running embedded service (`python -m visionjobs.cli run`, tiny models, two API keys).

Playwright is used only as the driver: it never downloads a browser here
(`executable_path` points at the system Chromium). Screenshots of every test land in
test-artifacts/console/, whatever the outcome.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    # Without these Chromium phones home at start and logs refused connections noisily.
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
]
FINAL = {"succeeded", "failed", "canceled"}


def chromium_path() -> str:
    explicit = os.environ.get("CHROMIUM")
    for candidate in ([explicit] if explicit else []) + [*CHROMIUM_CANDIDATES, shutil.which("chromium") or ""]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("the console tests need Chromium at /usr/bin/chromium: install it with "
                "`apt-get install -y chromium` (Debian/Ubuntu; `make test` does this), or set CHROMIUM=/path/to/chrome",
                pytrace=False)


@pytest.fixture(scope="package")  # stopped when tests/console is done, not at the end of `make test`
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the console tests need Playwright for Python: `pip install -e '.[test]'` "
                    "(or `pip install playwright`; no `playwright install` needed, the system Chromium is used)",
                    pytrace=False)
    path = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Service:
    def __init__(self, url: str, proc, data_dir: Path):
        self.url, self.proc, self.data_dir = url, proc, data_dir

    def api(self, key: str | None = None) -> httpx.Client:
        from tests.helpers import ALICE, auth

        return httpx.Client(base_url=self.url, headers=auth(key or ALICE), timeout=30)

    def wait(self, api: httpx.Client, job_id: str, until=FINAL, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = api.get(f"/v1/jobs/{job_id}", params={"wait": 2} if until == FINAL else None).json()
            if job["status"] in until:
                return job
            if job["status"] in FINAL:
                raise AssertionError(f"{job_id} ended {job['status']} while waiting for {until}: {job['error']}")
            if until != FINAL:
                time.sleep(0.1)
        raise TimeoutError(f"{job_id} not {until} after {timeout} s")


@pytest.fixture(scope="package")
def service(tmp_path_factory):
    """`python -m visionjobs.cli run` with a clean env: tiny profile, keys for alice and bob."""
    from tests.conftest import free_port
    from tests.helpers import KEYS
    from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_http

    tmp = tmp_path_factory.mktemp("console-service")
    port = free_port()
    env = clean_env(VISIONJOBS_MODEL_PROFILE="tiny", VISIONJOBS_API_KEYS=KEYS, VISIONJOBS_PROGRESS_INTERVAL_S="0.05")
    proc = Proc([*VISIONJOBS, "run", "--port", str(port), "--data-dir", str(tmp / "data")], env, tmp / "service.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield Service(f"http://127.0.0.1:{port}", proc, tmp / "data")
    finally:
        proc.stop()


@pytest.fixture
def page(browser, service, request):
    """A fresh browser context (empty session storage) per test; its screenshot is kept."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=service.url)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # a Content-Security-Policy violation is a bug in the console, not noise
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Content Security Policy" in m.text else None)
    pg.errors = errors
    try:
        yield pg
    finally:
        try:
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        except Exception:  # a crashed page must not hide the test's own failure
            pass
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page, key: str) -> None:
    """Open the console and paste the key, as a user would."""
    page.goto("/console")
    page.fill("#api-key", key)
    page.click("#key-save")
    page.wait_for_selector("#key-status[data-state='ok']")
