"""How a job's outcome becomes its final state, and the store retry the claim and the final
write share. Used by the runner and by dynamic batching alike (neither imports the other)."""
from __future__ import annotations

import logging
import time

from service.store.base import CANCELED, FAILED, SUCCEEDED, StoreUnavailable
from worker.errors import JobCanceled, JobFailed, OwnershipLost

log = logging.getLogger("visionjobs.worker")
STORE_WAIT_S = 300.0  # how long a worker waits for an unreachable job store to claim or finish a job


def with_store_retry(what: str, fn, *, give_up_after: float = STORE_WAIT_S):
    """Call `fn` until the job store answers (backoff 0.25 s .. 5 s), at most `give_up_after`
    seconds; then let StoreUnavailable out. For the calls a job cannot do without: its claim
    and its final write (a Redis restart must neither drop a message nor fail a finished job)."""
    deadline, delay = time.monotonic() + give_up_after, 0.25
    while True:
        try:
            return fn()
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: job store unreachable, retrying in %.2f s: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError without importing torch here; MPS/CPU allocators say the same words.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def classify(outcome) -> tuple[str, dict | None, dict | None] | None:
    """(status, result, error) for a job's outcome (its result or the exception that ended it);
    None when the attempt lost the job (write nothing)."""
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
