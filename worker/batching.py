"""Dynamic batching, for kinds that declare `batch_key` and `run_batch` (colorize today):
after claiming a job, the worker claims up to `batch_max - 1` queued jobs of the same kind with
an equal batch key and runs them as one batch. Each job keeps its own lease, progress, cancel,
seed, outputs and final state. Partners are taken oldest first; their Celery messages later
find them claimed and are dropped.

This module knows no kind: the runner passes the kind's resolved declaration (worker/registry.py)."""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack

from service.store.base import SUCCEEDED, JobRecord
from worker.joblog import capture
from worker.model_cache import release_memory
from worker.outcomes import classify, with_store_retry

log = logging.getLogger("visionjobs.worker")


def partners(runner, first: JobRecord, batch_key) -> list[JobRecord]:
    """`first` plus the queued jobs claimed to run with it (`batch_key(runner, job)`)."""
    limit = runner.settings.batch_max
    if batch_key is None or limit <= 1:
        return [first]
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


def execute_batch(runner, jobs: list[JobRecord], run_batch) -> dict[str, str]:
    """Run `jobs` through `run_batch(ctxs)` and write each job's final state; job id -> status."""
    s = runner.settings
    with ExitStack() as stack:
        controls = [stack.enter_context(runner.job_control(job)) for job in jobs]
        ctxs = [runner.context(job, control) for job, control in zip(jobs, controls)]
        started = time.perf_counter()
        with capture(controls[0].log):  # one thread runs the batch: its warnings go to the first job's log
            outcomes = run_batch(ctxs)
        run_s = time.perf_counter() - started
        statuses = {}
        for ctx, outcome in zip(ctxs, outcomes):
            job = ctx.job
            verdict = classify(outcome)
            if verdict is None:
                statuses[job.id] = "ownership_lost"
                continue
            status, result, error = verdict
            if isinstance(outcome, BaseException):
                ctx.control.log.failure(outcome)
            extra = runner.final_extra(ctx, run_s)
            done = with_store_retry(f"finish {job.id}", lambda: runner.store.finish(
                job.id, job.attempt, status, result=result, error=error, model_profile=ctx.reported_profile(),
                extra=extra))
            if done:
                runner.observe(job, extra)
            statuses[job.id] = status
            log.info("job %s -> %s (batch of %d)", job.id, status, len(jobs))
    if any(v != SUCCEEDED for v in statuses.values()):
        release_memory()
    return statuses

