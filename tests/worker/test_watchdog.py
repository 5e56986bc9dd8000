"""The job watchdog, in-process with a stand-in for the process exit: a handler stuck in one long
call (a sleep: no Python code runs, no step callback comes) is failed with `timeout` at limit +
grace, exactly once, and a dedicated worker process would exit; a job that ends in time is left
alone and the C-level backstop is disarmed."""
from __future__ import annotations

import faulthandler
import threading
import time

import pytest

from service.kinds import KINDS, JobKind
from service.storage import build_object_store
from service.store.base import JobRecord, new_id
from service.store.sqlite_store import SqliteJobStore
from worker.config import WorkerSettings
from worker.control import EXIT_HUNG_JOB, watchdog
from worker.registry import runtime
from worker.runner import Runner

RELEASED = threading.Event()


def stuck_handler(ctx):
    time.sleep(3.0)  # one long call: nothing checks the clock meanwhile
    RELEASED.set()
    ctx.write_output("late.png", b"x", "image/png")  # what a finished attempt would write
    return {"late": True}


def quick_handler(ctx):
    return {"ok": True}


@pytest.fixture(autouse=True)
def test_kinds(monkeypatch):
    for name, handler in (("watchdog.stuck", "stuck_handler"), ("watchdog.quick", "quick_handler")):
        monkeypatch.setitem(KINDS, name, JobKind(name, "test kind", handler=f"tests.worker.test_watchdog:{handler}"))
    runtime.cache_clear()
    yield
    runtime.cache_clear()


@pytest.fixture
def runner(tmp_path, monkeypatch):
    exits = []
    settings = WorkerSettings(data_dir=tmp_path, model_profile="tiny", redis_url=None, s3_bucket=None,
                              job_time_limit_s=0.5, job_kill_grace_s=0.5)
    r = Runner(settings, SqliteJobStore(tmp_path / "jobs.sqlite3"), build_object_store(settings), name="wd",
               exit_on_hang=True)
    monkeypatch.setattr(watchdog, "exit", exits.append)
    r.exits = exits
    yield r
    watchdog.configure(grace_s=10.0, exit_process=False)
    faulthandler.cancel_dump_traceback_later()


def _job(runner, kind) -> str:
    job = JobRecord(id=new_id("job"), tenant="t", kind=kind, params={})
    return runner.store.create_job(job)[0].id


def test_a_handler_stuck_in_one_call_is_failed_once_and_the_process_would_exit(runner):
    RELEASED.clear()
    job_id = _job(runner, "watchdog.stuck")
    began = time.monotonic()
    outcome = runner.execute(job_id)  # the stand-in exit returns, so the call comes back
    job = runner.store.get_job(job_id)
    assert RELEASED.is_set() and outcome == "ownership_lost"
    assert job.status == "failed" and job.error["code"] == "timeout" and "watchdog" in job.error["message"]
    assert 1.0 <= job.finished_at - job.started_at < 2.5, job.finished_at - job.started_at
    assert runner.exits == [EXIT_HUNG_JOB]
    assert job.result is None and not runner.objects.exists(f"jobs/{job_id}/late.png")
    assert time.monotonic() - began >= 3.0


def test_a_job_that_ends_in_time_is_left_alone(runner):
    job_id = _job(runner, "watchdog.quick")
    assert runner.execute(job_id) == "succeeded"
    time.sleep(1.5)  # past limit + grace: the watchdog must not touch a finished job
    job = runner.store.get_job(job_id)
    assert job.status == "succeeded" and job.result == {"ok": True} and runner.exits == []
