"""The colorize job's fidelity settings end to end through the runner (tiny profile): the
caption on the result, the official schedule's step count in the progress, and the fp32
load switch (VISIONJOBS_COLORIZE_FP32)."""
from __future__ import annotations

import types

import pytest
import torch

from tests.helpers import photo
from tests.worker.test_runner import runner, submit, tiny_pipe  # noqa: F401  (fixtures)
from worker.config import WorkerSettings
from worker.runner import Runner


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only contend on a small shared CPU
    yield
    torch.set_num_threads(n)


def test_result_carries_the_caption_and_the_prompt_used(runner):  # noqa: F811
    job = submit(runner, photo(80, 64))
    assert runner.execute(job.id) == "succeeded"
    res = runner.store.get_job(job.id).result
    assert res["caption"] and res["prompt"] == f"{res['caption']}, best quality, detailed, real"
    assert res["denoising_steps"] == 2 and res["precision"] == "float32"
    job = submit(runner, photo(80, 64), auto_caption=False)
    assert runner.execute(job.id) == "succeeded"
    res = runner.store.get_job(job.id).result
    assert res["caption"] is None and res["prompt"] == "best quality, detailed, real"


def test_uniform_timesteps_report_the_steps_that_run(runner, monkeypatch):  # noqa: F811
    stages = []
    real = runner.store.heartbeat
    monkeypatch.setattr(runner.store, "heartbeat", lambda *a, **kw: stages.append(kw.get("stage")) or real(*a, **kw))
    job = submit(runner, photo(64, 64), steps=30, sag_scale=0.0, prompt="x",
                 parity={"timesteps": "uniform"})
    assert runner.execute(job.id) == "succeeded"
    done = runner.store.get_job(job.id)
    assert done.result["denoising_steps"] == 31 and done.progress == 1.0
    assert "denoising 31/31" in stages and "denoising 30/30" not in stages


@pytest.mark.parametrize("fp32, expected", [(True, torch.float32), (False, None)])
def test_colorize_fp32_switch_sets_only_the_colorize_dtype(tmp_path, monkeypatch, fp32, expected):
    import models.profiles

    seen = {}
    monkeypatch.setattr(models.profiles, "load",
                        lambda kind, profile, model_dir, device, **kw: seen.setdefault(kind, kw) and types.SimpleNamespace()
                        or types.SimpleNamespace())
    settings = WorkerSettings(data_dir=tmp_path, model_profile="tiny", device="cuda", colorize_fp32=fp32,
                              channels_last=False, redis_url=None, s3_bucket=None)
    r = Runner(settings, store=None, objects=None, name="t")
    r.pipeline("colorize")
    r.pipeline("video.edit")
    assert seen["colorize"].get("dtype") is expected  # None: the loader's default, fp16 on CUDA
    assert "dtype" not in seen["video.edit"]
