"""Dynamic batching in the worker: compatible colorize jobs share one batch, each keeping its
seed, progress, cancel and outputs."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.storage import build_object_store
from service.store.sqlite_store import SqliteJobStore
from tests.helpers import photo
from tests.worker.test_runner import submit
from worker.config import WorkerSettings
from worker.runner import Runner


@pytest.fixture(scope="module")
def tiny_pipe():
    import torch

    from models.profiles import load

    torch.set_num_threads(1)
    pipe = load("colorize", "tiny", None, "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_runner(tmp_path, tiny_pipe, batch_max):
    settings = WorkerSettings(data_dir=tmp_path, model_profile="tiny", progress_interval_s=0.0, lease_s=30,
                              redis_url=None, s3_bucket=None, batch_max=batch_max)
    r = Runner(settings, SqliteJobStore(tmp_path / "jobs.sqlite3"), build_object_store(settings), name="test")
    r.cache.get(("colorize", "tiny", r.device), lambda: tiny_pipe)
    return r


def output(runner, job_id, i=0) -> np.ndarray:
    key = runner.store.get_job(job_id).result["images"][i]["key"]
    return np.asarray(Image.open(io.BytesIO(runner.objects.get(key))), np.int16)


def test_compatible_jobs_share_one_batch_and_keep_their_results(tmp_path, tiny_pipe):
    runner = make_runner(tmp_path / "b", tiny_pipe, batch_max=4)
    jobs = [submit(runner, photo(96, 64), steps=3, seed=s, prompt=p, num_outputs=n)
            for s, p, n in ((1, "red", 1), (2, "", 2), (3, "blue", 1))]
    odd = submit(runner, photo(64, 96), steps=3, seed=4)  # another working size: not a partner
    other_settings = submit(runner, photo(96, 64), steps=5, seed=5)
    batches = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        assert runner.execute(jobs[0].id) == "succeeded"
    finally:
        handle.remove()
    assert set(batches) == {8}  # (1 + 2 + 1) images x CFG, every call
    for job in jobs:
        done = runner.store.get_job(job.id)
        assert done.status == "succeeded" and done.progress == 1.0 and done.attempt == 1
    assert runner.store.get_job(odd.id).status == "queued" and runner.store.get_job(other_settings.id).status == "queued"
    assert runner.execute(jobs[1].id) == "not_queued"  # its own message later finds it done

    alone = make_runner(tmp_path / "a", tiny_pipe, batch_max=1)
    for job in jobs:
        twin = submit(alone, photo(96, 64), **{
            k: job.params[k] for k in ("steps", "seed", "prompt", "num_outputs")})
        assert alone.execute(twin.id) == "succeeded"
        for i in range(job.params["num_outputs"]):
            diff = np.abs(output(runner, job.id, i) - output(alone, twin.id, i))
            assert diff.mean() < 0.1 and diff.max() <= 4  # seeds intact: float rounding of batched kernels only


def test_cancel_inside_a_batch_stops_only_that_job(tmp_path, tiny_pipe):
    runner = make_runner(tmp_path, tiny_pipe, batch_max=3)
    jobs = [submit(runner, photo(96, 64), steps=6, seed=s, sag_scale=0) for s in range(3)]
    calls = []

    def on_unet(module, args):
        calls.append(args[0].shape[0])
        if len(calls) == 2:
            runner.store.request_cancel(jobs[1].id)

    handle = tiny_pipe.unet.register_forward_pre_hook(on_unet)
    try:
        runner.execute(jobs[0].id)
    finally:
        handle.remove()
    states = [runner.store.get_job(j.id) for j in jobs]
    assert [s.status for s in states] == ["succeeded", "canceled", "succeeded"]
    assert states[1].error["code"] == "canceled" and not runner.objects.exists(f"jobs/{jobs[1].id}/output_0.png")
    assert len(calls) == 6  # the batch went on for the others


def test_batching_off_runs_one_job(tmp_path, tiny_pipe):
    runner = make_runner(tmp_path, tiny_pipe, batch_max=1)
    a, b = (submit(runner, photo(96, 64), steps=2, seed=s) for s in (1, 2))
    assert runner.execute(a.id) == "succeeded" and runner.store.get_job(b.id).status == "queued"
