"""How the API hands a job id to the workers.

Distributed: a Celery message naming the job id on the kind's queue (the API needs only
the Celery client, never the worker code). Embedded: nothing to send; the in-process runner
takes the oldest queued job from the store.
"""
from __future__ import annotations

import logging
from typing import Protocol

from service.kinds import queue_for
from service.store.connection import RedisTarget, as_target

RUN_JOB_TASK = "visionjobs.run_job"
log = logging.getLogger("visionjobs.dispatch")


def celery_base_config(redis: RedisTarget | str, visibility_timeout_s: int) -> dict:
    """Settings both the producer (API) and the consumers (workers) must agree on: the broker's
    address, Sentinel and TLS options come from the same RedisTarget as the job store's."""
    broker = as_target(redis).celery_config()
    return {
        **broker,
        "broker_transport_options": {**broker["broker_transport_options"], "visibility_timeout": visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # the job store holds results, not Celery
        "task_default_queue": "colorize",
    }


class Dispatcher(Protocol):
    blocking: bool  # True: dispatch does network I/O (the API calls it in a pool thread)

    def dispatch(self, job_id: str, kind: str) -> None: ...


class LocalDispatcher:
    """Embedded mode: the store itself is the queue."""

    blocking = False

    def dispatch(self, job_id: str, kind: str) -> None:
        return None


class CeleryDispatcher:
    blocking = True

    def __init__(self, redis_url: RedisTarget | str, visibility_timeout_s: int = 6 * 3600):
        from celery import Celery

        self.app = Celery("visionjobs-api")
        self.app.conf.update(celery_base_config(redis_url, visibility_timeout_s))

    def dispatch(self, job_id: str, kind: str) -> None:
        self.app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue_for(kind))
