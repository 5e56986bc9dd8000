"""A job's log: the lines clients read at GET /v1/jobs/{id}/logs and in `event: log` frames.

What goes in: stage changes (a stage's step counter does not count as a change), warnings
logged by any library in the job's thread, and the summary of a failure's traceback (frames
as package-relative paths: no host paths, user names or install locations leave the worker).

Bounded: the job keeps its last lines within `max_bytes` (VISIONJOBS_JOB_LOG_BYTES), each
line cut at MAX_LINE characters; `total` counts every line written, so readers know what was
dropped and streams know which lines are new. The buffer carries over from earlier attempts
(the claim hands the job's logs back).
"""
from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

MAX_LINE = 1000
TRACEBACK_FRAMES = 6
_STEP_COUNTER = re.compile(r"\s*\d+/\d+$")
_ROOT = str(Path(__file__).resolve().parents[1]) + "/"
# an absolute path of two or more parts (in messages): only its last part is kept
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def scrub(text: str) -> str:
    """Internal paths out of a message: the source tree's own become relative, others their last part."""
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1), text.replace(_ROOT, ""))


def frame_path(filename: str) -> str:
    """A traceback frame's file, relative to its package root (site-packages or the source tree)."""
    if "site-packages/" in filename:
        return filename.rsplit("site-packages/", 1)[1]
    if filename.startswith(_ROOT):
        return filename[len(_ROOT):]
    return Path(filename).name


class JobLog:
    def __init__(self, previous: dict[str, Any] | None, max_bytes: int, attempt: int = 1):
        previous = previous or {}
        self.max_bytes = max(0, int(max_bytes))
        self.total = int(previous.get("total", 0))
        self.lines: deque[str] = deque(previous.get("lines") or [])
        self._bytes = sum(len(line) + 1 for line in self.lines)
        self.attempt = attempt
        self.dirty = False
        self._stage_base: str | None = None
        self._lock = threading.Lock()

    def add(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tag = f" attempt {self.attempt}" if self.attempt > 1 else ""
        line = f"{stamp} {level}{tag} {message}"[:MAX_LINE]
        with self._lock:
            self.total += 1
            self.lines.append(line)
            self._bytes += len(line) + 1
            while self.lines and self._bytes > self.max_bytes:
                self._bytes -= len(self.lines.popleft()) + 1
            self.dirty = True

    def stage(self, stage: str) -> bool:
        """Log `stage` when it differs from the last one logged (step counters aside); True if logged."""
        base = _STEP_COUNTER.sub("", stage or "")
        if base == self._stage_base:
            return False
        self._stage_base = base
        self.add("INFO", f"stage: {base}")
        return True

    def failure(self, exc: BaseException) -> None:
        self.add("ERROR", scrub(f"{type(exc).__name__}: {exc}"))
        frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
        for frame in frames:
            self.add("ERROR", f"  at {frame_path(frame.filename)}:{frame.lineno} in {frame.name}")

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self.dirty = False
            return {"total": self.total, "lines": list(self.lines)}

    def pending(self) -> dict[str, Any] | None:
        """The snapshot when lines were added since the last one, else None."""
        return self.snapshot() if self.dirty else None


class ThreadLogHandler(logging.Handler):
    """Copies warnings (and worse) logged in one thread - the job's - into its JobLog."""

    def __init__(self, joblog: JobLog):
        super().__init__(logging.WARNING)
        self.joblog, self.thread = joblog, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library's call: never break the job
            message = str(record.msg)
        self.joblog.add(record.levelname, scrub(message.splitlines()[0] if message else ""))


class capture:
    """`with capture(joblog):` the job thread's warnings go to its log (and still to the worker's)."""

    def __init__(self, joblog: JobLog):
        self.handler = ThreadLogHandler(joblog)

    def __enter__(self):
        logging.getLogger().addHandler(self.handler)
        logging.captureWarnings(True)  # warnings.warn -> the py.warnings logger
        return self.handler.joblog

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
