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
