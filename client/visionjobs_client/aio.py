"""The asyncio client: the same methods as ``Client``, awaitable (``stream`` is an async iterator)."""
from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Union

import httpx
from pydantic import BaseModel

from visionjobs_client import sse
from visionjobs_client._base import (
    MAX_LONG_POLL_S, RETRY_EXCEPTIONS, BaseClient, JobMethods, JobRef, drop_none, dump_body, final_deadline,
    job_id_of, output_files,
)
from visionjobs_client.client import FILE_MODE, PathLike
from visionjobs_client.errors import ApiConnectionError, WaitTimeout
from visionjobs_client.models import (
    AnomalyModel, AnomalyModelList, Job, JobLogs, JobPage, JobStatus, KindList, SubjectModel, SubjectModelList,
    ThresholdsPatch, TunedVideoModel, TunedVideoModelPage, Upload,
)
from visionjobs_client.uploads import UploadSource, encode


class AsyncClient(BaseClient, JobMethods[Awaitable[Job]]):
    """Asynchronous client of the visionjobs API (httpx.AsyncClient underneath).

    >>> async with AsyncClient() as vj:
    ...     job = await vj.colorize(photo_array)
    ...     async for state in vj.stream(job):
    ...         print(state.status, state.progress)
    """

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 0.5, max_retry_wait: float = 30.0,
                 headers: Optional[Mapping[str, str]] = None, transport: Optional[httpx.AsyncBaseTransport] = None,
                 max_concurrent_uploads: int = 4):
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         max_retry_wait=max_retry_wait, headers=headers)
        self._http = httpx.AsyncClient(headers=self._headers, timeout=self.timeout, transport=transport,
                                       follow_redirects=True)
        self._upload_slots = max(1, int(max_concurrent_uploads))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- transport ---------------------------------------------------------------------

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as exc:
                delay = self._retry_delay(attempt)
                if delay is None:
                    raise ApiConnectionError(f"{request.method} {request.url}: {exc}") from exc
            except httpx.TransportError as exc:
                raise ApiConnectionError(f"{request.method} {request.url}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                delay = self._retry_delay(attempt, response)
                if delay is None:
                    raise self._error(response)
            attempt += 1
            await asyncio.sleep(delay)

    async def request(self, method: str, path: str, *, params: Optional[Mapping[str, Any]] = None, json: Any = None,
                      files: Any = None, headers: Optional[Mapping[str, str]] = None,
                      timeout: Union[float, httpx.Timeout, None] = None) -> httpx.Response:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        request = self._http.build_request(method, self._url(path), params=params, json=json, files=files,
                                           headers=headers, timeout=timeout if timeout is not None else self.timeout)
        return await self._send(request)

    # -- uploads -----------------------------------------------------------------------

    async def upload(self, source: UploadSource, *, filename: Optional[str] = None,
                     content_type: Optional[str] = None) -> Upload:
        encoded = await asyncio.to_thread(encode, source, filename, content_type)  # file reads / PNG encoding
        response = await self.request("POST", "/v1/uploads", files=encoded.multipart())
        return Upload.model_validate(response.json())

    async def get_upload(self, upload_id: str) -> Upload:
        return Upload.model_validate((await self.request("GET", f"/v1/uploads/{upload_id}")).json())

    # -- submitting ----------------------------------------------------------------------

    async def submit(self, kind_or_path: str, body: Union[BaseModel, Mapping[str, Any]], *,
                     idempotency_key: Optional[str] = None) -> Job:
        response = await self.request("POST", self._submit_path(kind_or_path), json=dump_body(body),
                                      headers=self._idempotency_headers(idempotency_key))
        return Job.model_validate(response.json())

    async def _submit_async(self, kind: str, fields: dict[str, Any], idempotency_key: Optional[str]) -> Job:
        slots = self._pending_uploads(kind, fields)
        if slots:
            gate = asyncio.Semaphore(self._upload_slots)

            async def one(slot):
                async with gate:
                    self._fill(slot, (await self.upload(self._slot_value(slot))).id)

            await asyncio.gather(*(one(s) for s in slots))
        return await self.submit(kind, self._request_body(kind, fields), idempotency_key=idempotency_key)

    def _submit_kind(self, kind: str, fields: dict[str, Any], idempotency_key: Optional[str]) -> Awaitable[Job]:
        return self._submit_async(kind, fields, idempotency_key)

    # -- jobs --------------------------------------------------------------------------

    async def get_job(self, job: JobRef, *, wait: Optional[float] = None) -> Job:
        wait = None if wait is None else max(0.0, min(float(wait), MAX_LONG_POLL_S))
        response = await self.request("GET", f"/v1/jobs/{job_id_of(job)}",
                                      params={"wait": round(wait, 3) if wait else None},
                                      timeout=self._long_poll_timeout(wait or 0.0))
        return Job.model_validate(response.json())

    async def list_jobs(self, *, kind: Optional[str] = None, status: Union[JobStatus, str, None] = None,
                        cursor: Optional[str] = None, limit: Optional[int] = None) -> JobPage:
        status = status.value if isinstance(status, JobStatus) else status
        response = await self.request("GET", "/v1/jobs", params={"kind": kind, "status": status, "cursor": cursor,
                                                                  "limit": limit})
        return JobPage.model_validate(response.json())

    async def iter_jobs(self, *, kind: Optional[str] = None, status: Union[JobStatus, str, None] = None,
                        page_size: int = 100) -> AsyncIterator[Job]:
        cursor = None
        while True:
            page = await self.list_jobs(kind=kind, status=status, cursor=cursor, limit=page_size)
            for job in page.items:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def kinds(self) -> KindList:
        """Every job kind: its route, input and result JSON schemas, the live workers serving it."""
        return KindList.model_validate((await self.request("GET", "/v1/kinds")).json())

    async def logs(self, job: JobRef) -> JobLogs:
        """The job's log so far (stage changes, warnings, a failure's traceback summary)."""
        return JobLogs.model_validate((await self.request("GET", f"/v1/jobs/{job_id_of(job)}/logs")).json())

    async def cancel(self, job: JobRef) -> Job:
        return Job.model_validate((await self.request("POST", f"/v1/jobs/{job_id_of(job)}/cancel")).json())

    async def wait(self, job: JobRef, timeout: Optional[float] = None, *, poll: float = MAX_LONG_POLL_S,
                   check: bool = False) -> Job:
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
            current = await self.get_job(job, wait=slice_s)

    async def stream(self, job: JobRef, *, timeout: Optional[float] = None, last_event_id: Optional[str] = None,
                     reconnects: int = 5, on_log: Optional[Callable[[int, str], Any]] = None) -> AsyncIterator[Job]:
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
                response = await self._send(request, stream=True)
                try:
                    decoder = sse.SSEDecoder()
                    async for line in response.aiter_lines():
                        event = decoder.feed(line.rstrip("\r\n"))
                        if event is None:
                            continue
                        if event.event == "gone":
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
                    await response.aclose()
                cause: Optional[Exception] = None
            except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, ApiConnectionError) as exc:
                cause = exc
            if deadline is not None and time.monotonic() >= deadline:
                if latest is None:
                    latest = await self.get_job(job_id)
                    if latest.final:
                        yield latest
                        return
                raise WaitTimeout(latest, float(timeout or 0))
            failures += 1
            if failures > reconnects:
                raise ApiConnectionError(f"event stream of {job_id} kept failing: {cause}") from cause
            await asyncio.sleep(min(self.backoff * 2 ** (failures - 1), 5.0))

    # -- results -----------------------------------------------------------------------

    async def download(self, target: Any, path: Optional[PathLike] = None, *,
                       chunk_size: int = 1 << 20) -> Union[bytes, Path]:
        url = self._target_url(target)
        request = self._http.build_request("GET", url, timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 60)))
        self._download_request_headers(request)
        response = await self._send(request, stream=True)
        try:
            if path is None:
                return await response.aread()
            dest = self._destination(url, path)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    async for chunk in response.aiter_bytes(chunk_size):
                        fh.write(chunk)
                os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600: downloads get the usual mode (0644 under umask 022)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return dest
        finally:
            await response.aclose()

    async def download_outputs(self, job: JobRef, directory: PathLike) -> list[Path]:
        job = job if isinstance(job, Job) else await self.get_job(job)
        out = Path(directory)
        targets = []
        for url, name in output_files(job):
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            targets.append((url, dest))
        return list(await asyncio.gather(*(self.download(url, dest) for url, dest in targets)))

    # -- anomaly models ----------------------------------------------------------------

    async def list_anomaly_models(self) -> AnomalyModelList:
        return AnomalyModelList.model_validate((await self.request("GET", "/v1/anomaly-models")).json())

    async def get_anomaly_model(self, model_id: str) -> AnomalyModel:
        return AnomalyModel.model_validate((await self.request("GET", f"/v1/anomaly-models/{model_id}")).json())

    async def update_anomaly_model(self, model_id: str, *, image_threshold: Optional[float] = None,
                                   pixel_threshold: Optional[float] = None) -> AnomalyModel:
        body = dump_body(ThresholdsPatch(**drop_none(dict(image_threshold=image_threshold,
                                                          pixel_threshold=pixel_threshold))))
        response = await self.request("PATCH", f"/v1/anomaly-models/{model_id}", json=body)
        return AnomalyModel.model_validate(response.json())

    async def delete_anomaly_model(self, model_id: str) -> None:
        await self.request("DELETE", f"/v1/anomaly-models/{model_id}")

    # -- subject models ----------------------------------------------------------------

    async def list_subject_models(self) -> SubjectModelList:
        return SubjectModelList.model_validate((await self.request("GET", "/v1/subject-models")).json())

    async def get_subject_model(self, model_id: str) -> SubjectModel:
        return SubjectModel.model_validate((await self.request("GET", f"/v1/subject-models/{model_id}")).json())

    async def delete_subject_model(self, model_id: str) -> None:
        await self.request("DELETE", f"/v1/subject-models/{model_id}")

    # -- tuned video models ------------------------------------------------------------

    async def list_video_models(self, *, cursor: Optional[str] = None,
                                limit: Optional[int] = None) -> TunedVideoModelPage:
        response = await self.request("GET", "/v1/video-models", params={"cursor": cursor, "limit": limit})
        return TunedVideoModelPage.model_validate(response.json())

    async def iter_video_models(self, *, page_size: int = 100) -> AsyncIterator[TunedVideoModel]:
        cursor = None
        while True:
            page = await self.list_video_models(cursor=cursor, limit=page_size)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def get_video_model(self, model_id: str) -> TunedVideoModel:
        return TunedVideoModel.model_validate((await self.request("GET", f"/v1/video-models/{model_id}")).json())

    async def delete_video_model(self, model_id: str) -> None:
        await self.request("DELETE", f"/v1/video-models/{model_id}")

    async def ready(self) -> dict[str, Any]:
        return (await self.request("GET", "/readyz")).json()
