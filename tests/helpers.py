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
