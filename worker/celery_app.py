"""The Celery app (distributed mode). One task: run the job named by the message.

The message carries only a job id; the job store decides whether it runs (atomic claim).
A redelivered or duplicate message for a job already running or final is simply dropped.
"""
from __future__ import annotations

import logging

from celery import Celery, signals
from celery.exceptions import Reject
from kombu import Queue

from service.dispatch import RUN_JOB_TASK, celery_base_config
from service.kinds import queues
from service.store.base import StoreUnavailable
from worker.config import WorkerSettings
from worker.control import start_drain

log = logging.getLogger("visionjobs.worker")


def make_celery(settings: WorkerSettings) -> Celery:
    app = Celery("visionjobs")
    app.conf.update(celery_base_config(settings.redis_target(), settings.visibility_timeout_s))
    app.conf.update(
        task_acks_late=True,              # a message is acked only after the job ran
        task_reject_on_worker_lost=True,  # and requeued if the process running it dies
        worker_prefetch_multiplier=1,     # never hold a second GPU job hostage
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_queues=[Queue(name) for name in queues()],
    )
    return app


settings = WorkerSettings()
app = make_celery(settings)
_runner = None


def get_runner():
    """Built lazily inside the worker process (solo pool: no fork after this)."""
    global _runner
    if _runner is None:
        from service.storage import build_object_store
        from service.store import build_job_store
        from worker.runner import Runner

        _runner = Runner(settings, build_job_store(settings), build_object_store(settings), exit_on_hang=True)
    return _runner


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> str:
    try:
        outcome = get_runner().execute(job_id)
    except StoreUnavailable as exc:
        # The claim never reached the store (the runner already waited for it): keep the message,
        # or the job would stay queued with nothing left to run it.
        log.error("job %s: job store unreachable, message requeued: %s", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    if outcome == "handed_back":  # the job is queued again: so is its message, for a worker that stays
        raise Reject("handed back by a stopping worker", requeue=True)
    return outcome


@signals.worker_shutting_down.connect
def _drain(**_):
    """Warm shutdown (SIGTERM): Celery takes no new message and waits for the running one; after
    drain_timeout_s the running job is handed back instead (worker/control.py HAND_BACK)."""
    start_drain(settings.drain_timeout_s)
