"""The registry of job kinds: one `JobKind` declaration per kind, read by every part.

Who reads what:
    API (service/)      name, queue, description, `wants` (the job-kind list, dispatch,
                        metrics, the submission check against live workers' reports)
    worker/registry.py  handler, warmup, batch_key / run_batch, capabilities (dotted strings)
    runner, preload     models (their profile is resolved once per kind from them)
    launcher, CLI       queue (the default queue list is every kind's queue)
    models fetch/check  models (each names a `models.profiles` entry: its required files,
                        and its downloads in `models/fetch.py`)

Why dotted strings: the API process must never import torch, diffusers, transformers,
worker/ or models/ (a test checks it), yet the declaration must be one. So a declaration
names the worker-side code as "module:attribute" strings, which only the worker resolves
(lazily, on first use: `worker.registry.runtime`). This module imports nothing but the
standard library; a test resolves every string, so a typo fails the suite, not a job.

Adding a kind is one `declare(JobKind(...))` below, plus
    * its handler module, worker/jobs/<kind>.py: `handler(ctx: worker.context.JobContext) -> dict`
      (the stored result: object keys, not URLs); optional `warmup(pipe)`, `capabilities(rt)`,
      `batch_key(rt, job)` / `run_batch(ctxs)`;
    * its models loader: `models.profiles.register(ModelSpec(name, loader, required))`, and
      its downloads under the same name in `models/fetch.py` (`MANIFEST`);
    * its route in service/api/routes/, calling `service.jobs.accept(..., kind=<name>)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class JobKind:
    """One job kind.

    name        the kind, e.g. "colorize"; also its queue unless `queue` says otherwise
    description one line for listings
    handler     "module:function": handler(ctx) -> result dict
    models      `models.profiles` entries every job of the kind loads, main first. The kind's
                profile (`auto` -> tiny | pretrained) is resolved once, from these alone.
    optional_models entries some jobs load (under the kind's profile), e.g. a metric's model
    warmup      "module:function": warmup(pipe of models[0]) at --preload, one tiny pass
    batch_key   "module:function": batch_key(rt, job) -> hashable | None (dynamic batching:
                jobs with equal keys share one run); needs `run_batch`
    run_batch   "module:function": run_batch(ctxs) -> [result | exception] (one per job)
    capabilities "module:function": capabilities(rt) -> {feature: [missing files]} published
                by workers, so the API refuses a feature no live worker has
    wants       params -> {feature: field}: the features a submission needs (torch-free: the
                API calls it), checked against the live workers' `capabilities`
    path        the submission route, e.g. "/v1/colorizations"
    request     "module:Model": the request body's pydantic model (GET /v1/kinds shows its JSON schema)
    result      "module:Model": the result's pydantic model
    """

    name: str
    description: str
    handler: str
    models: tuple[str, ...] = ()
    optional_models: tuple[str, ...] = ()
    warmup: str | None = None
    batch_key: str | None = None
    run_batch: str | None = None
    capabilities: str | None = None
    wants: Callable[[dict], dict[str, str]] | None = None
    queue: str = ""
    path: str = ""
    request: str | None = None
    result: str | None = None

    def __post_init__(self):
        if not self.queue:
            object.__setattr__(self, "queue", self.name)
        if (self.batch_key is None) != (self.run_batch is None):
            raise ValueError(f"{self.name}: batch_key and run_batch go together")

    @property
    def batchable(self) -> bool:
        return self.batch_key is not None


KINDS: dict[str, JobKind] = {}


def declare(kind: JobKind) -> JobKind:
    if kind.name in KINDS:
        raise ValueError(f"job kind {kind.name!r} is declared twice")
    KINDS[kind.name] = kind
    return kind


def queue_for(kind: str) -> str:
    return KINDS[kind].queue


def queues() -> list[str]:
    """Every kind's queue, in declaration order (the default of `visionjobs worker`)."""
    return list(dict.fromkeys(k.queue for k in KINDS.values()))


def kinds_on(queue_names: list[str]) -> list[str]:
    """The kinds a worker consuming `queue_names` runs."""
    return [k.name for k in KINDS.values() if k.queue in queue_names]


def select(names: list[str] | tuple[str, ...]) -> list[str]:
    """Kinds named exactly or by family ("anomaly" = anomaly.fit + anomaly.score); ValueError
    naming the unknown ones."""
    out, unknown = [], []
    for name in names:
        found = [k for k in KINDS if k == name or k.startswith(name + ".")]
        if not found:
            unknown.append(name)
        out += [k for k in found if k not in out]
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)} "
                         f"(or a family: {', '.join(sorted({k.split('.')[0] for k in KINDS}))})")
    return out


# ----------------------------------------------------------------------------- the kinds

def _video_generate_wants(params: dict) -> dict[str, str]:
    return {"cscv": "metrics"} if "cscv" in (params.get("metrics") or []) else {}


def _subject_generate_wants(params: dict) -> dict[str, str]:
    return {"metrics": "metrics"} if params.get("metrics") else {}


def _anomaly_fit_wants(params: dict) -> dict[str, str]:
    arch = params.get("backbone")
    return {f"backbone:{arch}": "backbone"} if arch else {}


declare(JobKind(
    "anomaly.fit", "anomaly model fit: PatchCore (fitted) or Reverse Distillation (trained, resumable)",
    handler="worker.jobs.anomaly:fit", models=("anomaly",), warmup="worker.jobs.anomaly:warmup",
    capabilities="worker.jobs.anomaly:capabilities", wants=_anomaly_fit_wants,
    path="/v1/anomaly-models", request="service.schemas.anomaly:AnomalyFitRequest", result="service.schemas.anomaly:AnomalyFitResult"))
declare(JobKind(
    "anomaly.score", "anomaly scoring (either model): score, label, maps, segmentation, boxes",
    handler="worker.jobs.anomaly:score", models=("anomaly",), warmup="worker.jobs.anomaly:warmup",
    path="/v1/anomaly-scores", request="service.schemas.anomaly:AnomalyScoreRequest", result="service.schemas.anomaly:AnomalyScoreResult"))
declare(JobKind(
    "colorize", "Control Color image colorization",
    handler="worker.jobs.colorize:run", models=("colorize",), warmup="worker.jobs.colorize:warmup",
    batch_key="worker.jobs.colorize:batch_key", run_batch="worker.jobs.colorize:run_batch",
    capabilities="worker.jobs.colorize:capabilities",
    path="/v1/colorizations", request="service.schemas.colorization:ColorizationRequest", result="service.schemas.colorization:ColorizationResult"))
declare(JobKind(
    "video.edit", "Tune-A-Video one-shot tuning and editing",
    handler="worker.jobs.video_edit:run", models=("video.edit",),
    path="/v1/video-edits", request="service.schemas.video:VideoEditRequest", result="service.schemas.video:VideoEditResult"))
declare(JobKind(
    "video.generate", "DiTCtrl multi-prompt long video on CogVideoX",
    handler="worker.jobs.video_generate:run", models=("video.generate",), optional_models=("video.cscv",),
    capabilities="worker.jobs.video_generate:capabilities", wants=_video_generate_wants,
    path="/v1/video-generations", request="service.schemas.video:VideoGenerationRequest", result="service.schemas.video:VideoGenerationResult"))
declare(JobKind(
    "subject.generate", "Subject-driven generation: in-context (BLIP-Diffusion) or expert (DreamBooth-LoRA)",
    # both methods' models: a worker of this kind serves either (`method` per request)
    handler="worker.jobs.subject:generate", models=("subject.in_context", "subject.expert"),
    optional_models=("subject.metrics",), warmup="worker.jobs.subject:warmup_incontext",
    capabilities="worker.jobs.subject:capabilities", wants=_subject_generate_wants,
    path="/v1/subject-generations", request="service.schemas.subject:SubjectGenerationRequest", result="service.schemas.subject:SubjectGenerationResult"))
declare(JobKind(
    "subject.tune", "DreamBooth-LoRA tuning of a subject model (sbm_...)",
    handler="worker.jobs.subject:tune", models=("subject.expert",), warmup="worker.jobs.subject:warmup_expert",
    path="/v1/subject-models", request="service.schemas.subject:SubjectModelRequest", result="service.schemas.subject:SubjectModelResult"))
