"""Job handlers by kind: each takes a JobContext and returns the stored result (object keys, not URLs)."""
from __future__ import annotations

from worker.jobs import anomaly, colorize, video_edit, video_generate

HANDLERS = {
    "anomaly.fit": anomaly.fit,
    "anomaly.score": anomaly.score,
    "colorize": colorize.run,
    "video.edit": video_edit.run,
    "video.generate": video_generate.run,
}

# Run once at --preload so the first job does not pay first-call costs (allocator, kernels).
WARMUPS = {
    "colorize": colorize.warmup,
}
