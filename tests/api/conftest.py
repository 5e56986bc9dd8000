from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import build_context, create_app
from service.core.config import Settings
from tests.helpers import KEYS


@pytest.fixture
def ctx(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=KEYS, max_upload_bytes=200_000, max_image_pixels=1_000_000,
                        redis_url=None, s3_bucket=None)
    return build_context(settings)


@pytest.fixture
def client(ctx):
    with TestClient(create_app(ctx, run_reaper=False)) as c:
        yield c


@pytest.fixture
def live(ctx, client):
    """The API plus an in-process worker on the same store (the embedded arrangement), tiny models."""
    import threading

    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner
    from service.kinds import KINDS

    settings = WorkerSettings(**{**ctx.settings.model_dump(), "model_profile": "tiny", "progress_interval_s": 0.05})
    runner = Runner(settings, ctx.store, ctx.objects, name="live-test")
    stop = threading.Event()
    thread = threading.Thread(target=poll_loop, args=(runner, list(KINDS), stop, 0.05), daemon=True)
    thread.start()
    client.runner = runner  # tests may look at the warm pipelines
    yield client
    stop.set()
    thread.join(timeout=60)
