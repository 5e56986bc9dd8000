"""The synchronous client."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import httpx
from pydantic import BaseModel

from visionjobs_client import sse
from visionjobs_client._base import (
    MAX_LONG_POLL_S, RETRY_EXCEPTIONS, BaseClient, JobMethods, JobRef, drop_none, dump_body, final_deadline, job_id_of,
    output_files,
)
from visionjobs_client.errors import ApiConnectionError, WaitTimeout
from visionjobs_client.models import (
    AnomalyModel, AnomalyModelList, Job, JobLogs, JobPage, JobStatus, KindList, SubjectModel, SubjectModelList,
    ThresholdsPatch, TunedVideoModel, TunedVideoModelPage, Upload,
)
from visionjobs_client.uploads import UploadSource, encode

PathLike = Union[str, "os.PathLike[str]"]


def _file_mode() -> int:
    mask = os.umask(0o022)  # read the process umask (set back at once)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


class Client(BaseClient, JobMethods[Job]):
    """Synchronous client of the visionjobs API.

    >>> with Client("http://127.0.0.1:8000", api_key=None) as vj:
    ...     job = vj.wait(vj.colorize("photo.jpg", prompt="a red car"), timeout=600)
    ...     vj.download(job.result.images[0], "out.png")

    ``base_url`` and ``api_key`` default to ``VISIONJOBS_URL`` / ``VISIONJOBS_API_KEY``
    (``ClientSettings.from_env``). 429 and 503 answers (and failed connections) are retried
    up to ``max_retries`` times, honouring Retry-After; errors are ``ApiError`` subclasses.
    """

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 0.5, max_retry_wait: float = 30.0,
                 headers: Optional[Mapping[str, str]] = None, transport: Optional[httpx.BaseTransport] = None):
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         max_retry_wait=max_retry_wait, headers=headers)
        self._http = httpx.Client(headers=self._headers, timeout=self.timeout, transport=transport,
                                  follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send with retries; an error status raises its ApiError (the body read first)."""
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as exc:
                delay = self._retry_delay(attempt)
                if delay is None:
                    raise ApiConnectionError(f"{request.method} {request.url}: {exc}") from exc
            except httpx.TransportError as exc:
                raise ApiConnectionError(f"{request.method} {request.url}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                delay = self._retry_delay(attempt, response)
                if delay is None:
                    raise self._error(response)
            attempt += 1
            time.sleep(delay)

    def request(self, method: str, path: str, *, params: Optional[Mapping[str, Any]] = None, json: Any = None,
                files: Any = None, headers: Optional[Mapping[str, str]] = None,
                timeout: Union[float, httpx.Timeout, None] = None) -> httpx.Response:
        """A raw API call with this client's auth, retries and error mapping."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        request = self._http.build_request(method, self._url(path), params=params, json=json, files=files,
                                           headers=headers, timeout=timeout if timeout is not None else self.timeout)
        return self._send(request)

    # -- uploads -----------------------------------------------------------------------

    def upload(self, source: UploadSource, *, filename: Optional[str] = None,
               content_type: Optional[str] = None) -> Upload:
        """Upload a path, bytes, a binary file object, a PIL image or a numpy array (images
        are sent as PNG). Returns the Upload whose ``id`` requests refer to."""
        encoded = encode(source, filename, content_type)
        response = self.request("POST", "/v1/uploads", files=encoded.multipart())
        return Upload.model_validate(response.json())

    def get_upload(self, upload_id: str) -> Upload:
        return Upload.model_validate(self.request("GET", f"/v1/uploads/{upload_id}").json())

    # -- submitting ----------------------------------------------------------------------

    def submit(self, kind_or_path: str, body: Union[BaseModel, Mapping[str, Any]], *,
               idempotency_key: Optional[str] = None) -> Job:
        """POST a job: ``kind_or_path`` is a kind (``"colorize"``), a path
        (``"/v1/colorizations"``) or its last part (``"colorizations"``). ``body`` is a request
        model (unset and None fields are left out) or a plain dict sent as it is.

        Sends ``Idempotency-Key`` (the one given, else a fresh one for this call, so the
        call's own retries never create two jobs); the same key later returns the same job."""
        response = self.request("POST", self._submit_path(kind_or_path), json=dump_body(body),
                                headers=self._idempotency_headers(idempotency_key))
        return Job.model_validate(response.json())

    def _submit_kind(self, kind: str, fields: dict[str, Any], idempotency_key: Optional[str]) -> Job:
        for slot in self._pending_uploads(kind, fields):
            self._fill(slot, self.upload(self._slot_value(slot)).id)
        return self.submit(kind, self._request_body(kind, fields), idempotency_key=idempotency_key)

    # -- jobs --------------------------------------------------------------------------

    def get_job(self, job: JobRef, *, wait: Optional[float] = None) -> Job:
        """The job now; with ``wait`` (seconds, at most 60) the server holds the answer until
        the job is final or the time is up."""
        wait = None if wait is None else max(0.0, min(float(wait), MAX_LONG_POLL_S))
        response = self.request("GET", f"/v1/jobs/{job_id_of(job)}",
                                params={"wait": round(wait, 3) if wait else None},
                                timeout=self._long_poll_timeout(wait or 0.0))
        return Job.model_validate(response.json())

    def list_jobs(self, *, kind: Optional[str] = None, status: Union[JobStatus, str, None] = None,
                  cursor: Optional[str] = None, limit: Optional[int] = None) -> JobPage:
        """One page of this tenant's jobs, newest first; pass ``next_cursor`` on."""
        status = status.value if isinstance(status, JobStatus) else status
        response = self.request("GET", "/v1/jobs", params={"kind": kind, "status": status, "cursor": cursor,
                                                            "limit": limit})
        return JobPage.model_validate(response.json())

    def iter_jobs(self, *, kind: Optional[str] = None, status: Union[JobStatus, str, None] = None,
                  page_size: int = 100) -> Iterator[Job]:
        """Every job of this tenant (newest first), following the cursors."""
        cursor = None
        while True:
            page = self.list_jobs(kind=kind, status=status, cursor=cursor, limit=page_size)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def kinds(self) -> KindList:
        """Every job kind: its route, input and result JSON schemas, the live workers serving it."""
        return KindList.model_validate((self.request("GET", "/v1/kinds")).json())

    def logs(self, job: JobRef) -> JobLogs:
        """The job's log so far (stage changes, warnings, a failure's traceback summary)."""
        return JobLogs.model_validate((self.request("GET", f"/v1/jobs/{job_id_of(job)}/logs")).json())

    def cancel(self, job: JobRef) -> Job:
        """Cancel: a queued job at once, a running one within one step; a final job comes back unchanged."""
        return Job.model_validate(self.request("POST", f"/v1/jobs/{job_id_of(job)}/cancel").json())

    def wait(self, job: JobRef, timeout: Optional[float] = None, *, poll: float = MAX_LONG_POLL_S,
             check: bool = False) -> Job:
        """Long-poll until the job is final and return it. ``timeout`` None waits as long as
        it takes; otherwise ``WaitTimeout`` (a ``TimeoutError`` carrying the last state).
        ``check=True`` raises ``JobFailed`` when it failed or was canceled."""
        deadline = final_deadline(timeout)
        current = job if isinstance(job, Job) else None
        while True:
            if current is not None and current.final:
                return current.raise_for_status() if check else current
            slice_s = poll
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and current is not None:
                    raise WaitTimeout(current, float(timeout or 0))
                slice_s = min(poll, max(0.0, remaining))
            current = self.get_job(job, wait=slice_s)

    def stream(self, job: JobRef, *, timeout: Optional[float] = None, last_event_id: Optional[str] = None,
               reconnects: int = 5, on_log: Optional[Callable[[int, str], Any]] = None) -> Iterator[Job]:
        """Job states as the server publishes them (server-sent events), until a final one.

        A dropped connection is resumed with ``Last-Event-ID`` (so no state is repeated), up
        to ``reconnects`` times in a row. ``timeout``: ``WaitTimeout`` if not final by then.
        ``on_log(index, line)``: called for each line of the job's log as the worker writes it."""
        job_id = job_id_of(job)
        deadline = final_deadline(timeout)
        last = last_event_id
        failures = 0
        latest = job if isinstance(job, Job) else None
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last is not None:
                headers["Last-Event-ID"] = last
            request = self._http.build_request("GET", self._url(f"/v1/jobs/{job_id}/events"), headers=headers,
                                               timeout=self._sse_timeout(deadline))
            try:
                response = self._send(request, stream=True)
                try:
                    for event in sse.parse(response.iter_lines()):
                        if event.event == "gone":  # expired by retention while streaming
                            return
                        if event.event == "log" and on_log is not None:
                            line = json.loads(event.data)
                            on_log(int(line["index"]), str(line["line"]))
                        if event.event != "job":
                            continue
                        if event.id is not None:
                            last = event.id
                        latest = Job.model_validate_json(event.data)
                        failures = 0
                        yield latest
                        if latest.final:
                            return
                        if deadline is not None and time.monotonic() >= deadline:
                            raise WaitTimeout(latest, float(timeout or 0))
                finally:
                    response.close()
                cause: Optional[Exception] = None  # ended before a final state (a proxy cut it): resume
            except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, ApiConnectionError) as exc:
                cause = exc
            if deadline is not None and time.monotonic() >= deadline:
                if latest is None:
                    latest = self.get_job(job_id)
                    if latest.final:
                        yield latest
                        return
                raise WaitTimeout(latest, float(timeout or 0))
            failures += 1
            if failures > reconnects:
                raise ApiConnectionError(f"event stream of {job_id} kept failing: {cause}") from cause
            time.sleep(min(self.backoff * 2 ** (failures - 1), 5.0))

    # -- results -----------------------------------------------------------------------

    def download(self, target: Any, path: Optional[PathLike] = None, *, chunk_size: int = 1 << 20) -> Union[bytes, Path]:
        """Fetch a result file: ``target`` is a URL, a dict with ``url`` or an output model
        (``ImageOutput``, ``VideoOutput``, ...). Returns the bytes when ``path`` is None, else
        writes the file (into it, under the URL's file name, when ``path`` is a directory)
        and returns its path."""
        url = self._target_url(target)
        request = self._http.build_request("GET", url, timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 60)))
        self._download_request_headers(request)
        response = self._send(request, stream=True)
        try:
            if path is None:
                return response.read()
            dest = self._destination(url, path)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in response.iter_bytes(chunk_size):
                        fh.write(chunk)
                os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600: downloads get the usual mode (0644 under umask 022)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return dest
        finally:
            response.close()

    def download_outputs(self, job: JobRef, directory: PathLike) -> list[Path]:
        """Download every file a (succeeded) job's result links to into ``directory``, under
        the names the worker gave them (``output_0.png``, ``video.mp4``, ...)."""
        job = job if isinstance(job, Job) else self.get_job(job)
        out = Path(directory)
        paths = []
        for url, name in output_files(job):
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            paths.append(self.download(url, dest))
        return paths

    # -- anomaly models ----------------------------------------------------------------

    def list_anomaly_models(self) -> AnomalyModelList:
        """This tenant's fitted anomaly models."""
        return AnomalyModelList.model_validate(self.request("GET", "/v1/anomaly-models").json())

    def get_anomaly_model(self, model_id: str) -> AnomalyModel:
        return AnomalyModel.model_validate(self.request("GET", f"/v1/anomaly-models/{model_id}").json())

    def update_anomaly_model(self, model_id: str, *, image_threshold: Optional[float] = None,
                             pixel_threshold: Optional[float] = None) -> AnomalyModel:
        """New raw thresholds without refitting (each maps to 0.5 after normalisation)."""
        body = dump_body(ThresholdsPatch(**drop_none(dict(image_threshold=image_threshold,
                                                          pixel_threshold=pixel_threshold))))
        return AnomalyModel.model_validate(self.request("PATCH", f"/v1/anomaly-models/{model_id}", json=body).json())

    def delete_anomaly_model(self, model_id: str) -> None:
        """Delete a model and its files."""
        self.request("DELETE", f"/v1/anomaly-models/{model_id}")

    # -- subject models ----------------------------------------------------------------

    def list_subject_models(self) -> SubjectModelList:
        """This tenant's subject models (DreamBooth-LoRA tunings)."""
        return SubjectModelList.model_validate(self.request("GET", "/v1/subject-models").json())

    def get_subject_model(self, model_id: str) -> SubjectModel:
        return SubjectModel.model_validate(self.request("GET", f"/v1/subject-models/{model_id}").json())

    def delete_subject_model(self, model_id: str) -> None:
        """Delete a subject model and its stored LoRA delta."""
        self.request("DELETE", f"/v1/subject-models/{model_id}")

    # -- tuned video models ------------------------------------------------------------

    def list_video_models(self, *, cursor: Optional[str] = None, limit: Optional[int] = None) -> TunedVideoModelPage:
        """One page of this tenant's tuned video models (``tvm_...``), newest first."""
        response = self.request("GET", "/v1/video-models", params={"cursor": cursor, "limit": limit})
        return TunedVideoModelPage.model_validate(response.json())

    def iter_video_models(self, *, page_size: int = 100) -> Iterator[TunedVideoModel]:
        """Every tuned video model of this tenant (newest first), following the cursors."""
        cursor = None
        while True:
            page = self.list_video_models(cursor=cursor, limit=page_size)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_video_model(self, model_id: str) -> TunedVideoModel:
        return TunedVideoModel.model_validate(self.request("GET", f"/v1/video-models/{model_id}").json())

    def delete_video_model(self, model_id: str) -> None:
        """Delete a tuned video model and its stored artifacts."""
        self.request("DELETE", f"/v1/video-models/{model_id}")

    # -- service -----------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """``/readyz``: raises ``Unavailable`` when the job store or storage is unreachable."""
        return self.request("GET", "/readyz").json()
