"""Dynamic batching (colorize): after claiming a job, the worker claims up to `batch_max - 1`
queued jobs with the same batch key (working size and per-step settings) and denoises them as
one batch. Each job keeps its own lease, progress, cancel, seed, outputs and final state.
Partners are taken oldest first; their Celery messages later find them claimed and are dropped."""
from __future__ import annotations

import logging
from contextlib import ExitStack

from service.store.base import CANCELED, FAILED, SUCCEEDED, JobRecord
from worker.control import JobControl
from worker.errors import JobCanceled, JobFailed, OwnershipLost

log = logging.getLogger("visionjobs.worker")
BATCHABLE = {"colorize"}


def partners(runner, first: JobRecord) -> list[JobRecord]:
    """`first` plus the queued jobs claimed to run with it."""
    limit = runner.settings.batch_max
    if first.kind not in BATCHABLE or limit <= 1:
        return [first]
    from worker.jobs.colorize import batch_key

    try:
        key = batch_key(runner, first)
        if key is None:
            return [first]
        batch = [first]
        for job_id in runner.store.queued_ids(first.kind, limit * 4):
            if len(batch) >= limit:
                break
            job = runner.store.get_job(job_id)
            if job is None or batch_key(runner, job) != key:
                continue
            claimed = runner.store.claim(job_id, runner.name, runner.settings.lease_s).job
            if claimed is not None:
                log.info("job %s (%s) attempt %d started on %s (batched with %s)", claimed.id, claimed.kind,
                         claimed.attempt, runner.name, first.id)
                batch.append(claimed)
        return batch
    except Exception as exc:  # batching is an optimisation: never let it cost the first job
        log.warning("no batch for %s: %s", first.id, exc)
        return [first]


def classify(outcome) -> tuple[str, dict | None, dict | None] | None:
    """(status, result, error) for a job's outcome; None when the attempt lost the job."""
    from worker.runner import is_out_of_memory

    if not isinstance(outcome, BaseException):
        return SUCCEEDED, outcome, None
    if isinstance(outcome, OwnershipLost):
        return None
    if isinstance(outcome, JobCanceled):
        return CANCELED, None, {"code": outcome.code, "message": str(outcome)}
    if isinstance(outcome, JobFailed):
        return FAILED, None, {"code": outcome.code, "message": str(outcome)}
    if is_out_of_memory(outcome):
        return FAILED, None, {"code": "out_of_memory", "message": f"the device ran out of memory: {outcome}"[:500]}
    return FAILED, None, {"code": "internal_error", "message": f"{type(outcome).__name__}: {outcome}"[:500]}


def execute_batch(runner, jobs: list[JobRecord]) -> dict[str, str]:
    from worker.jobs.colorize import run_batch
    from worker.model_cache import release_memory
    from worker.runner import JobContext, with_store_retry

    s = runner.settings
    with ExitStack() as stack:
        controls = [stack.enter_context(JobControl(runner.store, job, lease_s=s.lease_s,
                                                   progress_interval_s=s.progress_interval_s,
                                                   time_limit_s=s.job_time_limit_s)) for job in jobs]
        outcomes = run_batch([JobContext(job, control, runner) for job, control in zip(jobs, controls)])
        statuses = {}
        for job, outcome in zip(jobs, outcomes):
            verdict = classify(outcome)
            if verdict is None:
                statuses[job.id] = "ownership_lost"
                continue
            status, result, error = verdict
            with_store_retry(f"finish {job.id}", lambda: runner.store.finish(
                job.id, job.attempt, status, result=result, error=error, model_profile=runner._profiles.get(job.kind)))
            statuses[job.id] = status
            log.info("job %s -> %s (batch of %d)", job.id, status, len(jobs))
    if any(v != SUCCEEDED for v in statuses.values()):
        release_memory()
    return statuses
