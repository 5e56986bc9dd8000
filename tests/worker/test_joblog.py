"""A job's log: bounded, stage changes once each, warnings of the job's thread, failures
summarised without host paths."""
from __future__ import annotations

import logging
import threading

from worker.joblog import JobLog, capture


def _explode():
    raise OSError("cannot open /home/someone/private/models/unet.safetensors")


def test_a_failure_summary_names_frames_relative_to_their_package_and_no_host_path():
    joblog = JobLog(None, 32768)
    try:
        _explode()
    except OSError as exc:
        joblog.failure(exc)
    text = "\n".join(joblog.snapshot()["lines"])
    assert "OSError: cannot open …/unet.safetensors" in text
    assert "/home/someone" not in text
    assert "at tests/worker/test_joblog.py:" in text and "in _explode" in text
    assert "/work/" not in text and "site-packages" not in text


def test_the_log_keeps_its_last_lines_within_its_byte_bound_and_counts_every_line():
    joblog = JobLog(None, 2000)
    for i in range(500):
        joblog.add("INFO", f"line {i}")
    snap = joblog.snapshot()
    assert snap["total"] == 500
    assert sum(len(line) + 1 for line in snap["lines"]) <= 2000
    assert snap["lines"][-1].endswith("line 499") and len(snap["lines"]) < 500
    again = JobLog(snap, 2000, attempt=2)  # a later attempt goes on from the stored log
    again.add("INFO", "retry")
    assert again.snapshot()["total"] == 501 and "INFO attempt 2 retry" in again.snapshot()["lines"][-1]


def test_stage_changes_are_logged_once_step_counters_aside():
    joblog = JobLog(None, 32768)
    logged = [joblog.stage(s) for s in ("loading model", "denoising 1/4", "denoising 2/4", "decoding", "decoding")]
    assert logged == [True, True, False, True, False]
    assert [line.split(" ", 2)[2] for line in joblog.snapshot()["lines"]] == [
        "stage: loading model", "stage: denoising", "stage: decoding"]


def test_warnings_of_the_jobs_thread_are_captured_and_other_threads_are_not():
    joblog = JobLog(None, 32768)
    lib = logging.getLogger("some.library")
    with capture(joblog):
        lib.warning("low precision in %s", "/opt/venv/lib/thing.py")
        other = threading.Thread(target=lambda: lib.warning("another job's warning"))
        other.start()
        other.join()
        lib.info("not a warning")
    lines = joblog.snapshot()["lines"]
    assert len(lines) == 1 and "WARNING low precision in …/thing.py" in lines[0]
