"""What the sync and async clients share: configuration, retry policy, error mapping, request
bodies for each job kind, and output discovery. No I/O here."""
from __future__ import annotations

import email.utils
import math
import os
import posixpath
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any, Generic, Mapping, Optional, Sequence, TypeVar, Union
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BaseModel

from visionjobs_client.errors import ApiError, error_class
from visionjobs_client.models import (
    KIND_PATHS, REQUEST_MODELS, ColorizationParity, Guidance, Job, KvSharing, PriorPreservation, Problem, Stroke,
    TuningSettings, ValidationSet, Webhook,
)
from visionjobs_client.settings import ClientSettings

__version__ = "0.1.0"

RETRY_STATUSES = frozenset({429, 503})
#: transport failures after which a retry cannot run a request twice (nothing was sent, or
#: the connection dropped before any answer: submissions carry an Idempotency-Key)
RETRY_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.PoolTimeout)
#: the longest long-poll the API allows (GET /v1/jobs/{id}?wait=N)
MAX_LONG_POLL_S = 60.0
#: SSE read timeout without a deadline: the API sends a keep-alive comment every 15 s
SSE_READ_TIMEOUT_S = 60.0

#: job kind -> the request fields that hold upload ids (dotted for nested fields); any other
#: value given there (a path, bytes, a PIL image, a numpy array) is uploaded first
UPLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "colorize": ("image", "stroke_image", "exemplar"),
    "video.generate": (),
    "video.edit": ("video",),
    "anomaly.fit": ("images", "archive", "abnormal", "abnormal_masks", "validation.normal", "validation.abnormal"),
    "anomaly.score": ("images",),
    "subject.generate": ("subject_images",),
    "subject.tune": ("subject_images",),
}

JobRef = Union[Job, str]
#: ``Webhook(url=..., secret=..., events=[...])`` or the same as a dict
WebhookArg = Union[Webhook, Mapping[str, Any], None]
R = TypeVar("R")


def job_id_of(job: JobRef) -> str:
    if isinstance(job, Job):
        return job.id
    if isinstance(job, str) and job:
        return job
    raise TypeError(f"expected a Job or a job id, got {type(job).__name__}")


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def problem_of(response: httpx.Response) -> Problem:
    """The response's problem document; one made from the status when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("code" in body or "title" in body or "type" in body):
        try:
            problem = Problem.model_validate(body)
            if not problem.status:
                problem.status = response.status_code
            return problem
        except ValueError:
            pass
    detail = body.get("detail") if isinstance(body, dict) and isinstance(body.get("detail"), str) else ""
    text = (response.text or "").strip()
    return Problem(type="about:blank", title=response.reason_phrase or f"HTTP {response.status_code}",
                   status=response.status_code, detail=detail or text[:500], instance=response.request.url.path,
                   code=(response.reason_phrase or "http_error").lower().replace(" ", "_"))


def drop_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def dump_body(body: Union[BaseModel, Mapping[str, Any]]) -> dict[str, Any]:
    """JSON body: a model sends only the fields that were set and are not None (so the
    server's defaults apply); a mapping is sent as it is."""
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return dict(body)


def output_files(job: Job) -> list[tuple[str, str]]:
    """(url, relative file name) of every output a job's result links to, in result order.

    Names are the object key below ``jobs/{job_id}/`` (e.g. ``output_0.png``), so they
    match what the worker wrote; never absolute, never with ``..``."""
    result = job.result.model_dump(mode="json") if isinstance(job.result, BaseModel) else job.result
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                if (k == "url" or k.endswith("_url")) and isinstance(v, str) and v.startswith(("http://", "https://", "/")):
                    if v not in seen:
                        seen.add(v)
                        found.append((v, _file_name(job.id, v, len(found))))
                else:
                    walk(v)

    walk(result)
    return found


def _file_name(job_id: str, url: str, index: int) -> str:
    path = unquote(urlsplit(url).path)
    marker = f"jobs/{job_id}/"
    rel = path.split(marker, 1)[1] if marker in path else posixpath.basename(path)
    parts = [p for p in rel.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or f"output_{index}"


class BaseClient:
    """Configuration and the pure parts of a request: see ``Client`` and ``AsyncClient``."""

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 0.5, max_retry_wait: float = 30.0,
                 headers: Optional[Mapping[str, str]] = None):
        settings = ClientSettings.from_env(base_url, api_key)
        self.base_url = settings.url
        self.api_key = settings.api_key
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_retry_wait = float(max_retry_wait)
        self._headers = {"User-Agent": f"visionjobs-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        self._headers.update(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- retries and errors ------------------------------------------------------------

    def _retry_delay(self, attempt: int, response: Optional[httpx.Response] = None) -> Optional[float]:
        """Seconds to wait before retry number ``attempt + 1``, or None: do not retry.

        429/503 honour Retry-After; a Retry-After beyond ``max_retry_wait`` is not shortened
        but ends the retries (the error carries ``retry_after``). Without one: exponential
        backoff with jitter, capped by ``max_retry_wait``."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            after = parse_retry_after(response.headers.get("Retry-After"))
            if after is not None:
                return after if after <= self.max_retry_wait else None
        base = min(self.backoff * (2 ** attempt), self.max_retry_wait)
        return base * (0.5 + random.random() / 2)

    def _error(self, response: httpx.Response) -> ApiError:
        problem = problem_of(response)
        cls = error_class(response.status_code)
        return cls(problem, method=response.request.method, url=str(response.request.url), headers=response.headers,
                   retry_after=parse_retry_after(response.headers.get("Retry-After")))

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _long_poll_timeout(self, wait: float) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=self.timeout + wait)

    def _sse_timeout(self, deadline: Optional[float]) -> httpx.Timeout:
        read = SSE_READ_TIMEOUT_S if deadline is None else max(0.5, min(SSE_READ_TIMEOUT_S, deadline - time.monotonic()))
        return httpx.Timeout(self.timeout, read=read)

    @staticmethod
    def _submit_path(kind_or_path: str) -> str:
        if kind_or_path in KIND_PATHS:
            return KIND_PATHS[kind_or_path]
        if kind_or_path.startswith(("/", "http://", "https://")):
            return kind_or_path
        return "/v1/" + kind_or_path.strip("/")

    @staticmethod
    def _idempotency_headers(key: Optional[str]) -> dict[str, str]:
        # A fresh key per call when none is given: retries of this call can never make two jobs.
        return {"Idempotency-Key": key or f"vjc-{uuid.uuid4().hex}"}

    @staticmethod
    def _download_request_headers(request: httpx.Request) -> None:
        # A signed URL is its own credential: never send the API key along (it may be another
        # host, e.g. S3, which also refuses two authentication mechanisms at once).
        request.headers.pop("Authorization", None)
        request.headers["Accept"] = "*/*"

    def _target_url(self, target: Any) -> str:
        if isinstance(target, Mapping):
            target = target.get("url")
        elif not isinstance(target, str):
            target = getattr(target, "url", None)
        if not isinstance(target, str) or not target:
            raise TypeError("download() takes a URL, a dict with 'url' or an output with .url "
                            "(for every output of a job: download_outputs(job, directory))")
        return self._url(target) if target.startswith("/") else target

    @staticmethod
    def _destination(url: str, path: "Union[str, os.PathLike[str]]") -> Path:
        dest = Path(path)
        if dest.is_dir():
            name = os.path.basename(unquote(urlsplit(url).path)) or "download"
            dest = dest / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    @staticmethod
    def _request_body(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        model = REQUEST_MODELS[kind]
        return dump_body(model(**drop_none(fields)))

    @staticmethod
    def _pending_uploads(kind: str, fields: dict[str, Any]) -> list[tuple[dict[str, Any], str, Optional[int]]]:
        """(container, key, list index or None) of every upload field value that is not an id yet."""
        from visionjobs_client.uploads import upload_id_of

        slots: list[tuple[dict[str, Any], str, Optional[int]]] = []
        for dotted in UPLOAD_FIELDS.get(kind, ()):
            container: Any = fields
            *parents, key = dotted.split(".")
            for p in parents:
                value = container.get(p) if isinstance(container, dict) else None
                if isinstance(value, BaseModel):
                    value = value.model_dump(exclude_unset=True, exclude_none=True)
                    container[p] = value
                container = value
            if not isinstance(container, dict) or container.get(key) is None:
                continue
            value = container[key]
            if isinstance(value, (list, tuple)):
                items = container[key] = list(value)  # a copy: the caller's list stays as it was
                for i, item in enumerate(items):
                    if item is None:  # (abnormal_masks: an image without a mask)
                        continue
                    uid = upload_id_of(item)
                    if uid is None:
                        slots.append((container, key, i))
                    else:
                        items[i] = uid
            else:
                uid = upload_id_of(value)
                if uid is None:
                    slots.append((container, key, None))
                else:
                    container[key] = uid
        return slots

    @staticmethod
    def _fill(slot: tuple[dict[str, Any], str, Optional[int]], upload_id: str) -> None:
        container, key, index = slot
        if index is None:
            container[key] = upload_id
        else:
            container[key][index] = upload_id

    @staticmethod
    def _slot_value(slot: tuple[dict[str, Any], str, Optional[int]]) -> Any:
        container, key, index = slot
        return container[key] if index is None else container[key][index]


def _guidance(guidance: Union[Guidance, Mapping[str, Any], float, None]) -> Any:
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
        return Guidance(scale=float(guidance))
    return guidance


class JobMethods(Generic[R]):
    """One method per job kind. Each returns the new Job (``Client``) or an awaitable of it
    (``AsyncClient``). Upload fields take an upload id, an ``Upload``, or anything
    ``upload()`` takes (path, bytes, file object, PIL image, numpy array), uploaded first.
    ``None`` means "not sent": the server's default applies. Every kind takes ``webhook``
    (notified on state changes) and ``idempotency_key``."""

    def _submit_kind(self, kind: str, fields: dict[str, Any], idempotency_key: Optional[str]) -> R:
        raise NotImplementedError

    def colorize(self, image: Any, *, prompt: Optional[str] = None, negative_prompt: Optional[str] = None,
                 strokes: Optional[Sequence[Union[Stroke, Mapping[str, Any]]]] = None, stroke_image: Any = None,
                 exemplar: Any = None, seed: Optional[int] = None, steps: Optional[int] = None,
                 guidance: Union[Guidance, Mapping[str, Any], float, None] = None, sag_scale: Optional[float] = None,
                 sag_threshold: Optional[int] = None, deformable_decoder: Optional[bool] = None,
                 auto_caption: Optional[bool] = None,
                 parity: Union[str, ColorizationParity, Mapping[str, Any], None] = None,
                 num_outputs: Optional[int] = None, output_format: Optional[str] = None, webhook: WebhookArg = None,
                 idempotency_key: Optional[str] = None) -> R:
        """Colorize a photo (Control Color): kind ``colorize``. ``guidance`` may be a scale (CFG);
        a mode without a scale gets the mode's default. An empty prompt is captioned (BLIP)
        unless ``auto_caption=False``. ``parity``: ``"official"`` or per-switch (see
        ``ColorizationParity``)."""
        return self._submit_kind("colorize", dict(
            image=image, prompt=prompt, negative_prompt=negative_prompt,
            strokes=list(strokes) if strokes is not None else None, stroke_image=stroke_image, exemplar=exemplar,
            seed=seed, steps=steps, guidance=_guidance(guidance), sag_scale=sag_scale, sag_threshold=sag_threshold,
            deformable_decoder=deformable_decoder, auto_caption=auto_caption, parity=parity, num_outputs=num_outputs,
            output_format=output_format, webhook=webhook,
        ), idempotency_key)

    def generate_video(self, prompts: Union[str, Sequence[str]], *, segments: Optional[int] = None,
                       overlap: Optional[int] = None, transition_segments: Optional[int] = None,
                       kv_sharing: Union[KvSharing, Mapping[str, Any], None] = None, steps: Optional[int] = None,
                       guidance_scale: Optional[float] = None, seed: Optional[int] = None,
                       width: Optional[int] = None, height: Optional[int] = None, fps: Optional[int] = None,
                       metrics: Optional[Sequence[str]] = None, webhook: WebhookArg = None,
                       idempotency_key: Optional[str] = None) -> R:
        """A long multi-prompt video (DiTCtrl on CogVideoX): kind ``video.generate``."""
        return self._submit_kind("video.generate", dict(
            prompts=[prompts] if isinstance(prompts, str) else list(prompts), segments=segments, overlap=overlap,
            transition_segments=transition_segments, kv_sharing=kv_sharing, steps=steps,
            guidance_scale=guidance_scale, seed=seed, width=width, height=height, fps=fps,
            metrics=list(metrics) if metrics is not None else None, webhook=webhook,
        ), idempotency_key)

    def edit_video(self, video: Any = None, *, edits: Union[str, Sequence[str]], source_prompt: Optional[str] = None,
                   tuned_model: Optional[str] = None, tune_steps: Optional[int] = None, frames: Optional[int] = None,
                   frame_stride: Union[int, str, None] = None, start_frame: Optional[int] = None,
                   width: Optional[int] = None, height: Optional[int] = None, steps: Optional[int] = None,
                   guidance_scale: Optional[float] = None, seed: Optional[int] = None, fps: Optional[int] = None,
                   gif: Optional[bool] = None, webhook: WebhookArg = None, idempotency_key: Optional[str] = None) -> R:
        """Edit a clip with text (Tune-A-Video): kind ``video.edit``. Give ``video`` with
        ``source_prompt`` to tune on it, or ``tuned_model`` (a ``tuned_model_id`` of an
        earlier edit) to reuse that tuning. ``frame_stride`` (server default 2, the official rule) and
        ``start_frame`` pick the clip's frames; ``"spread"`` spreads them over the clip."""
        return self._submit_kind("video.edit", dict(
            video=video, tuned_model=tuned_model, source_prompt=source_prompt,
            edits=[edits] if isinstance(edits, str) else list(edits), tune_steps=tune_steps, frames=frames,
            frame_stride=frame_stride, start_frame=start_frame, width=width, height=height, steps=steps,
            guidance_scale=guidance_scale, seed=seed, fps=fps, gif=gif, webhook=webhook,
        ), idempotency_key)

    def fit_anomaly_model(self, images: Optional[Sequence[Any]] = None, *, name: str, archive: Any = None,
                          model: Optional[str] = None, abnormal: Optional[Sequence[Any]] = None,
                          abnormal_masks: Optional[Sequence[Any]] = None,
                          validation: Union[ValidationSet, Mapping[str, Any], None] = None,
                          backbone: Optional[str] = None, coreset_ratio: Optional[float] = None,
                          image_size: Optional[int] = None, seed: Optional[int] = None,
                          max_epochs: Optional[int] = None, patience: Optional[int] = None,
                          batch_size: Optional[int] = None, learning_rate: Optional[float] = None,
                          webhook: WebhookArg = None, idempotency_key: Optional[str] = None) -> R:
        """Fit an anomaly model on a folder dataset: kind ``anomaly.fit``; the result names the
        ``model_id``. Normal ``images`` (they share one size) and optionally ``abnormal`` ones
        with their ``abnormal_masks`` (None for an image without one), or a ZIP ``archive``
        (flat: normal images; or with normal/, abnormal/ and mask/ folders). ``model``:
        ``"patchcore"`` (default) or ``"reverse_distillation"`` (trained: ``max_epochs``,
        ``patience``, ``batch_size``, ``learning_rate``; the running job's
        ``result["training"]`` has the per-epoch history). With abnormal images the dataset is
        split as anomalib's Folder splits it and the model's ``test_metrics`` come from the
        held-out split. PatchCore without abnormal images: ``validation`` is
        ``{"normal": [...], "abnormal": [...]}`` for the thresholds. Images are uploaded as needed."""
        return self._submit_kind("anomaly.fit", dict(
            name=name, model=model, images=list(images) if images is not None else None, archive=archive,
            abnormal=list(abnormal) if abnormal is not None else None,
            abnormal_masks=list(abnormal_masks) if abnormal_masks is not None else None,
            validation=dict(validation) if isinstance(validation, Mapping) else validation, backbone=backbone,
            coreset_ratio=coreset_ratio, image_size=image_size, seed=seed, max_epochs=max_epochs, patience=patience,
            batch_size=batch_size, learning_rate=learning_rate, webhook=webhook,
        ), idempotency_key)

    def score_anomalies(self, model: Any, images: Sequence[Any], *, webhook: WebhookArg = None,
                        idempotency_key: Optional[str] = None) -> R:
        """Score images with a fitted anomaly model (its id, or the finished ``anomaly.fit``
        job): kind ``anomaly.score``; per image a score, label, boxes and map URLs."""
        if isinstance(model, Job):
            model = getattr(model.result, "model_id", None) or (model.result or {}).get("model_id")
        return self._submit_kind("anomaly.score", dict(model_id=model, images=list(images), webhook=webhook),
                                 idempotency_key)

    def generate_subject(self, subject_images: Optional[Sequence[Any]] = None, *, prompt: str,
                         subject_class: Optional[str] = None, method: Optional[str] = None,
                         subject_model: Any = None, tuning: Union[TuningSettings, Mapping[str, Any], None] = None,
                         negative_prompt: Optional[str] = None, num_outputs: Optional[int] = None,
                         steps: Optional[int] = None, guidance_scale: Optional[float] = None, seed: Optional[int] = None,
                         width: Optional[int] = None, height: Optional[int] = None,
                         metrics: Optional[Sequence[str]] = None, webhook: WebhookArg = None,
                         idempotency_key: Optional[str] = None) -> R:
        """Images of a subject from 1-8 of its photos: kind ``subject.generate``.
        ``method="in_context"`` (the default without ``subject_model``): BLIP-Diffusion, no
        tuning; ``"expert"``: DreamBooth-LoRA, with ``subject_model`` (an ``sbm_`` id or the
        finished ``subject.tune`` job) no tuning, else tuned in the job (``tuning``)."""
        return self._submit_kind("subject.generate", dict(
            subject_images=list(subject_images) if subject_images is not None else None, subject_class=subject_class,
            prompt=prompt, negative_prompt=negative_prompt, method=method, subject_model=_subject_model_id(subject_model),
            tuning=tuning, num_outputs=num_outputs, steps=steps, guidance_scale=guidance_scale, seed=seed, width=width,
            height=height, metrics=list(metrics) if metrics is not None else None, webhook=webhook,
        ), idempotency_key)

    def tune_subject(self, subject_images: Sequence[Any], *, subject_class: str, identifier: Optional[str] = None,
                     steps: Optional[int] = None, rank: Optional[int] = None, learning_rate: Optional[float] = None,
                     train_text_encoder: Optional[bool] = None,
                     prior_preservation: Union[PriorPreservation, Mapping[str, Any], bool, None] = None,
                     seed: Optional[int] = None, webhook: WebhookArg = None, idempotency_key: Optional[str] = None) -> R:
        """Tune a subject model (DreamBooth-LoRA) on 1-8 photos: kind ``subject.tune``; the
        result names the ``subject_model`` later generations reuse. ``prior_preservation``
        may be ``True`` (the recipe's 100 class images) or ``{"enabled", "class_images"}``."""
        if isinstance(prior_preservation, bool):
            prior_preservation = PriorPreservation(enabled=prior_preservation)
        return self._submit_kind("subject.tune", dict(
            subject_images=list(subject_images), subject_class=subject_class, identifier=identifier, steps=steps,
            rank=rank, learning_rate=learning_rate, train_text_encoder=train_text_encoder,
            prior_preservation=prior_preservation, seed=seed, webhook=webhook,
        ), idempotency_key)


def _subject_model_id(model: Any) -> Any:
    if isinstance(model, Job):  # the finished subject.tune (or tuning subject.generate) job
        result = model.result
        return getattr(result, "subject_model", None) or (result or {}).get("subject_model")
    return model


def final_deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None or math.isinf(timeout):
        return None
    return time.monotonic() + max(0.0, float(timeout))
