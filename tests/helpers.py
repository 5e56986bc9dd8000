"""Test data and small helpers shared by the suites."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef01"
KEYS = f"alice:{ALICE},bob:{BOB}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def photo(width: int = 96, height: int = 72) -> Image.Image:
    """A real photograph (scikit-image's astronaut), resized."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((width, height), Image.LANCZOS)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def l_channel(img: Image.Image) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2LAB)[..., 0].astype(np.float64)


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        event = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            event[name] = value
        if event:
            events.append(event)
    return events


FINAL = ("succeeded", "failed", "canceled")


def wait_final(client, job_id: str, key: str = ALICE, timeout: float = 240) -> dict:
    """Long-poll a job until it is final (a TestClient or httpx client)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}, headers=auth(key)).json()
        if job["status"] in FINAL:
            return job
    raise TimeoutError(job_id)


class LiveServer:
    """The app under a real uvicorn in a thread (TestClient cannot hang up mid-request)."""

    def __init__(self, app):
        import threading

        import uvicorn

        from tests.conftest import free_port

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition` until it holds (a deadline for a hung test, not a timed assertion)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)
