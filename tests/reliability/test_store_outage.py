"""The job store going away under a worker and under the store client, in-process and with a real
(private) redis-server stopped and restarted at chosen moments: at the claim, mid-denoising,
while the input is read, at the final write. None of these may fail the job or cost it an
attempt when Redis is back within the lease; a store that accepts connections but never answers
must not hang a caller."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from service.storage import build_object_store
from service.store.base import JobRecord, StoreUnavailable, UploadRecord, new_id
from tests.helpers import photo, png_bytes
from tests.reliability.conftest import SIGNING_SECRET, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = RedisServer(tmp_path_factory.mktemp("outage-redis"))
    yield s
    s.stop()


@pytest.fixture
def store(server):
    from service.store.redis_store import RedisJobStore

    if server.proc.poll() is not None:
        server.start()
    server.client().flushdb()
    s = RedisJobStore(server.url)
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny_pipe():
    import torch

    from models.profiles import load

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the workers: spinning OpenMP threads crawl on busy shared cores
    pipe = load("colorize", "tiny", None, "cpu")
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(threads)


@pytest.fixture
def runner(tmp_path, store, server, tiny_pipe):
    from worker.config import WorkerSettings
    from worker.runner import Runner

    settings = WorkerSettings(redis_url=server.url, data_dir=tmp_path, signing_secret=SIGNING_SECRET, s3_bucket=None,
                              model_profile="tiny", device="cpu", lease_s=10, progress_interval_s=0.0)
    r = Runner(settings, store, build_object_store(settings), name="outage-test")
    r.cache.get(("colorize", "tiny", r.device), lambda: tiny_pipe)
    return r


def submit(runner, **params) -> JobRecord:
    data = png_bytes(photo(64, 64))
    up = UploadRecord(id=new_id("upl"), tenant="t", filename="p.png", content_type="image/png", size=len(data),
                      sha256="-", key=f"uploads/t/{new_id('u')}")
    runner.objects.put(up.key, data, "image/png")
    runner.store.put_upload(up)
    job = JobRecord(id=new_id("job"), tenant="t", kind="colorize", max_attempts=3,
                    params={"image": up.id, "prompt": "", "seed": 5, "steps": 2, "num_outputs": 1, "sag_scale": 0,
                            **params})
    return runner.store.create_job(job)[0]


def down_for(server: RedisServer, seconds: float) -> threading.Thread:
    """SIGKILL Redis now (AOF keeps what it acknowledged), start it again `seconds` later."""
    server.kill()

    def back():
        time.sleep(seconds)
        server.start()

    t = threading.Thread(target=back, daemon=True)
    t.start()
    return t


def assert_succeeded_first_try(runner, job_id: str) -> None:
    done = runner.store.get_job(job_id)
    assert done.status == "succeeded" and done.attempt == 1, (done.status, done.attempt, done.error)
    assert runner.objects.exists(f"jobs/{job_id}/output_0.png")


def test_claim_waits_for_the_store(runner, server):
    job = submit(runner)
    restart = down_for(server, 0.8)
    assert runner.execute(job.id) == "succeeded"
    restart.join()
    assert_succeeded_first_try(runner, job.id)


def test_outage_mid_denoising_neither_fails_nor_restarts_the_job(runner, server, tiny_pipe):
    job = submit(runner, steps=8)
    calls, restarts = [], []

    def on_unet(module, args):
        calls.append(1)
        if len(calls) == 3:
            restarts.append(down_for(server, 0.8))

    handle = tiny_pipe.unet.register_forward_pre_hook(on_unet)
    try:
        assert runner.execute(job.id) == "succeeded"
    finally:
        handle.remove()
    restarts[0].join()
    assert len(calls) == 8  # one pass, never run again
    assert_succeeded_first_try(runner, job.id)


def test_outage_while_reading_the_input_runs_the_job_again_in_the_same_attempt(runner, server, monkeypatch):
    job = submit(runner)
    real, restarts = runner.store.get_upload, []

    def get_upload(upload_id):
        if not restarts:
            restarts.append(down_for(server, 0.8))
        return real(upload_id)

    monkeypatch.setattr(runner.store, "get_upload", get_upload)
    assert runner.execute(job.id) == "succeeded"
    restarts[0].join()
    assert_succeeded_first_try(runner, job.id)


def test_final_write_waits_for_the_store(runner, server, monkeypatch):
    job = submit(runner)
    real, restarts = runner.store.finish, []

    def finish(*args, **kwargs):
        if not restarts:
            restarts.append(down_for(server, 0.8))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner.store, "finish", finish)
    assert runner.execute(job.id) == "succeeded"
    restarts[0].join()
    assert_succeeded_first_try(runner, job.id)


def test_store_calls_fail_fast_while_redis_is_down_and_recover_after(store, server):
    job = store.create_job(JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={}))[0]
    server.kill()
    for call in (lambda: store.get_job(job.id), store.ping, lambda: store.wait_for_change(job.id, job.version, 10)):
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - t < 1.0
    server.start()
    assert store.get_job(job.id).status == "queued"  # the same client reconnects by itself
    store.ping()


def test_wait_for_change_outlasts_its_block_slices(store):
    from service.store import redis_store

    job = store.create_job(JobRecord(id=new_id("job"), tenant="t", kind="colorize", params={}))[0]
    wake_at = redis_store.BLOCK_SLICE_S + 0.6
    threading.Timer(wake_at, store.request_cancel, args=[job.id]).start()
    t = time.monotonic()
    changed = store.wait_for_change(job.id, job.version, wake_at + 5)
    assert changed.version > job.version and changed.status == "canceled"
    assert wake_at - 0.1 < time.monotonic() - t < wake_at + 1.0  # woken by the change, not a timeout
    t = time.monotonic()
    same = store.wait_for_change(job.id, changed.version, redis_store.BLOCK_SLICE_S + 0.5)
    assert same.version == changed.version
    assert redis_store.BLOCK_SLICE_S + 0.4 < time.monotonic() - t < redis_store.BLOCK_SLICE_S + 1.5


def test_a_redis_that_accepts_but_never_answers_does_not_hang_callers(monkeypatch):
    from service.store import redis_store

    monkeypatch.setattr(redis_store, "SOCKET_TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
    try:
        store = redis_store.RedisJobStore(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.get_job("job_" + "0" * 24)
        assert time.monotonic() - t < 3.0
    finally:
        silent.close()
