"""Job kinds: name -> queue. Routing to workers is configuration (`--queues`), not code."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobKind:
    name: str
    queue: str
    description: str


KINDS: dict[str, JobKind] = {
    "anomaly.fit": JobKind("anomaly.fit", "anomaly.fit", "PatchCore fit on normal images"),
    "anomaly.score": JobKind("anomaly.score", "anomaly.score", "PatchCore scoring: score, label, maps, boxes"),
    "colorize": JobKind("colorize", "colorize", "Control Color image colorization"),
    "video.edit": JobKind("video.edit", "video.edit", "Tune-A-Video one-shot tuning and editing"),
    "video.generate": JobKind("video.generate", "video.generate", "DiTCtrl multi-prompt long video on CogVideoX"),
}


def queue_for(kind: str) -> str:
    return KINDS[kind].queue
