"""Fuzzing (issue 7): schemathesis generates requests from the committed openapi/openapi.json,
valid ones and invalid ones, sends them to the app in-process (ASGI) with a valid API key, and
checks every response: no server error, a documented status code, a documented content type, a
body and headers that match the documented schema.

Bounded and deterministic: `MAX_EXAMPLES` per operation from a derandomized Hypothesis run, plus
schemathesis' own coverage phase (boundary values of each constraint), so the whole file stays
within about a minute on two CPU cores and a failure reproduces exactly.

Every operation of the spec is fuzzed, none is excluded. `GET /v1/jobs/{job_id}/events` streams
(SSE) until its job is final: the seeded job ids below are final, so a stream ends after one
frame, and schemathesis' ASGI client cuts any stream after 20 events in any case.

Realistic ids: a request whose ids are all random only ever meets "no such upload" (422) or
"not found" (404), and the success paths (202 Job, 200 Job, 200 file) would never be checked
against their schema. So in about half of the generated *valid* requests (chosen by a hash of
the case, so deterministic) the ids are swapped for real ones of the right kind: an image, a
video, a ZIP of images, a final job, an anomaly model, a signed file URL. Invalid (negative)
requests are sent as generated.
"""
from __future__ import annotations

import time
import traceback
import zlib
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.openapi.checks import JsonSchemaError, UndefinedContentType, UndefinedStatusCode
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from service.app import build_context, create_app
from service.core.config import Settings
from tests.helpers import ALICE, KEYS, auth, photo, png_bytes
from tests.security import hostile_data as H

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 25

CONFIG = schemathesis.Config.from_dict({
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "mode": "all"},
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
               "stateful": {"enabled": False}},  # stateful: links between operations are not in the spec
})
schema = schemathesis.openapi.from_path(ROOT / "openapi/openapi.json", config=CONFIG)

# What "zero server errors and zero responses that violate the schema" means, check by check.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


class Seeds:
    """Real resources of the fuzzing tenant (alice), made once per module."""

    def __init__(self, ctx, app):
        from fastapi.testclient import TestClient

        self.ctx, self.app = ctx, app
        with TestClient(app) as client:
            def upload(data: bytes) -> str:
                r = client.post("/v1/uploads", files={"file": ("f", data, "application/octet-stream")}, headers=auth(ALICE))
                assert r.status_code == 201, r.text
                return r.json()["id"]

            self.image = upload(png_bytes(photo(96, 72)))
            self.video = upload(H.clip_mp4())
            self.archive = upload(H.zip_of({"a.png": png_bytes(photo(64, 64)), "b.png": png_bytes(photo(64, 64))}))
            job = client.post("/v1/colorizations", json={"image": self.image}, headers=auth(ALICE)).json()["id"]
            client.post(f"/v1/jobs/{job}/cancel", headers=auth(ALICE))  # final: its event stream ends at once
            self.job = job
        self.model = "anm_" + "c" * 24
        now = time.time()
        ctx.store.put_resource("anomaly_model", self.model, "alice", {
            "name": "m", "backbone": "tiny", "image_size": 64, "coreset_ratio": 0.1,
            "thresholds": {"image": 1.0, "pixel": 1.0, "image_method": "quantile", "pixel_method": "quantile"},
            "counts": {"train": 2}, "prefix": f"anomaly/alice/{self.model}/", "files": [], "job_id": job,
            "profile": "tiny", "created_at": now, "updated_at": now})
        self.file_key = f"jobs/{job}/output_0.png"
        ctx.objects.put(self.file_key, png_bytes(photo(8, 8)), "image/png")

    def file_query(self) -> dict:
        """expires, tenant and signature of a fresh signed URL of the seeded file."""
        url = self.ctx.objects.signed_url(self.file_key, tenant="alice", base_url="http://testserver", ttl_s=600).url
        query = dict(parse_qsl(urlsplit(url).query))
        return {**query, "expires": int(query["expires"])}

    def realistic(self, case) -> None:
        """Swap generated ids for real ones, in place (positive cases, about half of them)."""
        meta = case.meta
        mode = getattr(getattr(meta, "generation", None), "mode", None)
        if mode is None or str(getattr(mode, "value", mode)) != "positive":
            return
        if zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 2:
            return
        path = case.operation.path
        params = case.path_parameters or {}
        if "job_id" in params:
            params["job_id"] = self.job
        if "upload_id" in params:
            params["upload_id"] = self.image
        if "model_id" in params:
            params["model_id"] = self.model
        if path == "/v1/files/{key}":
            params["key"] = self.file_key
            case.query = {**(case.query or {}), **self.file_query()}
        body = case.body if isinstance(case.body, dict) else None
        if body is None:
            return
        for name, real in (("image", self.image), ("exemplar", self.image), ("stroke_image", self.image),
                           ("video", self.video), ("archive", self.archive)):
            if isinstance(body.get(name), str) and body[name].startswith("upl_"):
                body[name] = real
        if isinstance(body.get("images"), list):
            body["images"] = [self.image if isinstance(i, str) and i.startswith("upl_") else i for i in body["images"]]
        if path == "/v1/anomaly-scores" and isinstance(body.get("model_id"), str):
            body["model_id"] = self.model


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    settings_ = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), api_keys=KEYS, redis_url=None, s3_bucket=None,
                         max_upload_bytes=200_000, max_image_pixels=1_000_000)
    ctx = build_context(settings_)
    return Seeds(ctx, create_app(ctx, run_reaper=False))


def describe(failure, response) -> str:
    """One line per distinct kind of failure, so repeated examples of one gap count once."""
    status = response.status_code
    if isinstance(failure, ServerError):
        return f"server error {status}"
    if isinstance(failure, UndefinedStatusCode):
        return f"undocumented status code {status} (documented: {', '.join(map(str, failure.defined_status_codes))})"
    if isinstance(failure, UndefinedContentType):
        return (f"undocumented content type {failure.content_type!r} for status {status} "
                f"(documented: {', '.join(failure.defined_content_types)})")
    if isinstance(failure, JsonSchemaError):
        where = "/".join(map(str, failure.instance_path)) or "(root)"
        return f"status {status} body violates its schema at {where}: {getattr(failure, '_raw_message', failure.message)[:200]}"
    return f"{type(failure).__name__} (status {status}): {failure.title}"


class Findings(dict):
    """Distinct failures of one operation's run -> an example request (curl)."""

    label = "?"


@pytest.fixture
def findings():
    """Every distinct failure of one operation's run, reported together when the run is over
    (Hypothesis would stop at the first and show one gap at a time): the failure is raised
    from this fixture's teardown, so pytest shows it as an error of that operation's test."""
    found = Findings()
    yield found
    if found:
        lines = [f"- {what}\n    e.g. {example}" for what, example in sorted(found.items())]
        pytest.fail(f"{found.label}: {len(found)} distinct failure(s):\n" + "\n".join(lines), pytrace=False)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_the_committed_spec(case, seeds, findings):
    findings.label = case.operation.label
    seeds.realistic(case)
    try:
        response = case.call(app=seeds.app, headers=auth(ALICE))
    except Exception as exc:  # the app raised instead of answering: a 500 to any real client
        where = next((f"{Path(fr.filename).relative_to(ROOT)}:{fr.lineno}"
                      for fr in reversed(traceback.extract_tb(exc.__traceback__))
                      if fr.filename.startswith(str(ROOT / "service"))), "?")
        findings.setdefault(f"server error: {type(exc).__name__} raised at {where}", case.as_curl_command()[:400])
        return
    try:
        case.validate_response(response, checks=CHECKS, headers=auth(ALICE))
    except FailureGroup as group:
        for failure in group.exceptions:
            what = describe(failure, response)
            findings.setdefault(what, case.as_curl_command(headers=dict(response.request.headers))[:400])
