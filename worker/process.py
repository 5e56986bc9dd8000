"""One worker process (one per GPU, started by the launcher with CUDA_VISIBLE_DEVICES set).

Distributed: a Celery worker with the solo pool, so the model is loaded in this very process
and nothing forks after CUDA is initialised. Embedded (no Redis): polls the SQLite store.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

from service.dispatch import LocalDispatcher
from service.reaper import Reaper
from worker.capabilities import start_reporting

log = logging.getLogger("visionjobs.worker")


def poll_loop(runner, kinds: list[str], stop: threading.Event, idle_wait_s: float = 0.5) -> None:
    """Embedded queue: take the oldest queued job of our kinds until told to stop."""
    while not stop.is_set():
        job_id = runner.store.next_queued(kinds)
        if job_id is None:
            waiter = getattr(runner.store, "wait_for_queued", None)
            waiter(idle_wait_s) if waiter else stop.wait(idle_wait_s)
            continue
        runner.execute(job_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="visionjobs-worker-process")
    parser.add_argument("--queues", required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--preload", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("VISIONJOBS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    queues = [q for q in args.queues.split(",") if q]
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"

    from service.kinds import kinds_on
    from worker.celery_app import app, get_runner, settings

    kinds = kinds_on(queues)
    runner = get_runner()
    runner.name = f"{name}:{os.getpid()}"  # the pid tells operators (and tests) which process runs a job
    if args.preload or settings.preload:
        runner.preload(kinds)
    start_reporting(runner, kinds)
    if settings.distributed:
        from service.dispatch import CeleryDispatcher

        Reaper(runner.store, CeleryDispatcher(settings.redis_target(), settings.visibility_timeout_s),
               settings.reaper_interval_s, settings.lease_s).start()
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--queues={','.join(queues)}",
                         f"--hostname={name}-{os.getpid()}@%h", "--prefetch-multiplier=1", "--without-gossip",
                         "--without-mingle", "--loglevel=INFO"])
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Reaper(runner.store, LocalDispatcher(), settings.reaper_interval_s, settings.lease_s).start()
    log.info("embedded worker %s polling %s for %s", name, runner.store, kinds)
    try:
        poll_loop(runner, kinds, stop)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
