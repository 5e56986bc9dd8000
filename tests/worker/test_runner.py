"""The worker's job runner, in-process: real tiny pipeline, SQLite store, local object store."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.storage import build_object_store
from service.store.base import JobRecord, UploadRecord, new_id
from service.store.sqlite_store import SqliteJobStore
from tests.helpers import l_channel, photo, png_bytes
from worker.config import WorkerSettings
from worker.runner import Runner


@pytest.fixture(scope="module")
def tiny_pipe():
    from models.profiles import load

    return load("colorize", "tiny", None, "cpu")


@pytest.fixture
def runner(tmp_path, tiny_pipe):
    settings = WorkerSettings(data_dir=tmp_path, model_profile="tiny", progress_interval_s=0.0, lease_s=30,
                              redis_url=None, s3_bucket=None)
    r = Runner(settings, SqliteJobStore(tmp_path / "jobs.sqlite3"), build_object_store(settings), name="test")
    r.cache.get(("colorize", "tiny", r.device), lambda: tiny_pipe)  # share one warm pipeline
    return r


def submit(runner, img: Image.Image, **params) -> JobRecord:
    data = png_bytes(img)
    up = UploadRecord(id=new_id("upl"), tenant="t", filename="p.png", content_type="image/png", size=len(data),
                      sha256="-", key=f"uploads/t/{new_id('u')}", width=img.width, height=img.height)
    runner.objects.put(up.key, data, "image/png")
    runner.store.put_upload(up)
    job = JobRecord(id=new_id("job"), tenant="t", kind="colorize",
                    params={"image": up.id, "prompt": "", "seed": 5, "steps": 2, "num_outputs": 1, **params})
    return runner.store.create_job(job)[0]


def test_job_runs_to_outputs_with_input_size_and_l_channel(runner):
    img = photo(90, 70)
    job = submit(runner, img, num_outputs=2)
    assert runner.execute(job.id) == "succeeded"
    done = runner.store.get_job(job.id)
    assert done.status == "succeeded" and done.progress == 1.0 and done.model_profile == "tiny"
    assert done.result["seed"] == 5 and len(done.result["images"]) == 2
    for i, item in enumerate(done.result["images"]):
        assert item["key"] == f"jobs/{job.id}/output_{i}.png"
        out = Image.open(io.BytesIO(runner.objects.get(item["key"])))
        assert out.size == img.size == (item["width"], item["height"])
        assert np.abs(l_channel(out) - l_channel(img)).mean() <= 2.0
    # a second claim of the same message is refused: exactly once
    assert runner.execute(job.id) == "not_queued"


def test_models_stay_warm_between_jobs(runner):
    loads = runner.cache.loads
    for _ in range(2):
        assert runner.execute(submit(runner, photo(64, 64)).id) == "succeeded"
    assert runner.cache.loads == loads


def test_cancel_during_a_step_stops_after_that_step(runner, tiny_pipe):
    job = submit(runner, photo(64, 64), steps=8, sag_scale=0)  # SAG off: one UNet pass per step
    calls = []

    def on_unet(module, args):
        calls.append(1)
        if len(calls) == 3:  # the client cancels while step 3 is computing
            runner.store.request_cancel(job.id)

    handle = tiny_pipe.unet.register_forward_pre_hook(on_unet)
    try:
        assert runner.execute(job.id) == "canceled"
    finally:
        handle.remove()
    done = runner.store.get_job(job.id)
    assert done.status == "canceled" and done.error["code"] == "canceled"
    assert len(calls) == 3  # step 3 finished, step 4 never started
    assert not runner.objects.exists(f"jobs/{job.id}/output_0.png")


def test_out_of_memory_fails_the_job_and_the_worker_serves_on(runner, tiny_pipe, monkeypatch):
    job = submit(runner, photo(64, 64))

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tiny_pipe.unet, "forward", boom)
    assert runner.execute(job.id) == "failed"
    assert runner.store.get_job(job.id).error["code"] == "out_of_memory"
    monkeypatch.undo()
    assert runner.execute(submit(runner, photo(64, 64)).id) == "succeeded"


def test_time_limit_fails_with_timeout(runner):
    runner.settings.job_time_limit_s = 0.0
    job = submit(runner, photo(64, 64))
    assert runner.execute(job.id) == "failed"
    assert runner.store.get_job(job.id).error["code"] == "timeout"


def test_undecodable_upload_is_invalid_input(runner):
    job = submit(runner, photo(64, 64))
    up = runner.store.get_upload(job.params["image"])
    runner.objects.put(up.key, b"\x89PNG\r\n\x1a\ngarbage", "image/png")
    assert runner.execute(job.id) == "failed"
    err = runner.store.get_job(job.id).error
    assert err["code"] == "invalid_input" and err["message"].startswith("image:")


def test_a_stale_attempt_stops_and_writes_nothing(runner, tiny_pipe):
    job = submit(runner, photo(64, 64), steps=6)
    calls = []

    def on_unet(module, args):
        calls.append(1)
        if len(calls) == 2:  # the lease "expires" and the job is re-queued mid-run
            runner.store.reap_expired(now=1e12)

    handle = tiny_pipe.unet.register_forward_pre_hook(on_unet)
    try:
        assert runner.execute(job.id) == "ownership_lost"
    finally:
        handle.remove()
    requeued = runner.store.get_job(job.id)
    assert requeued.status == "queued" and requeued.attempt == 1 and len(calls) == 2
    assert not runner.objects.exists(f"jobs/{job.id}/output_0.png")
    outcome = runner.execute(job.id)
    assert outcome == "succeeded", runner.store.get_job(job.id).error
    assert runner.store.get_job(job.id).attempt == 2


def test_preload_loads_and_warms_the_pipeline(runner, tiny_pipe):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        runner.preload(["colorize"])
    finally:
        handle.remove()
    assert calls and ("colorize", "tiny", runner.device) in runner.cache
