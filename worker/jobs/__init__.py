"""Job handlers by kind: each takes a JobContext and returns the stored result (object keys, not URLs)."""
from __future__ import annotations

from worker.jobs import colorize

HANDLERS = {
    "colorize": colorize.run,
}
