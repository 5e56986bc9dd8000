"""Job handlers by kind: each takes a JobContext and returns the stored result (object keys, not URLs)."""
from __future__ import annotations

from worker.jobs import colorize, video_edit, video_generate

HANDLERS = {
    "colorize": colorize.run,
    "video.edit": video_edit.run,
    "video.generate": video_generate.run,
}
