"""The client's models against the committed contract (openapi/openapi.json): every field, which
fields are required, their types and enum values. A change to the API that the client does
not follow fails here.

Request models differ from the server's on purpose in two ways that are checked to hold:
they carry no defaults (None = "not sent", the server's default applies), so optional
fields are nullable on the client; and no limits (the server owns them)."""
from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any, Literal, Union

from pydantic import BaseModel

import visionjobs_client as vc
from visionjobs_client import models as m
from visionjobs_client._base import dump_body
from tests.client.conftest import route_absent

# Models that must be in the committed spec under the same name.
CORE = [m.Job, m.JobPage, m.JobMetrics, m.JobLogs, m.KindList, m.KindInfo, m.KindWorker, m.JobError, m.Upload, m.ImageOutput, m.ColorizationRequest, m.ColorizationResult, m.Stroke,
        m.Guidance, m.ColorizationParity, m.VideoGenerationRequest, m.VideoGenerationResult, m.VideoOutput, m.KvSharing, m.VideoEditRequest,
        m.VideoEditResult, m.EditedVideo, m.TunedVideoModel, m.TunedVideoModelPage]
# The anomaly kinds' models: checked whenever the spec has the anomaly routes.
ANOMALY = [m.AnomalyFitRequest, m.AnomalyScoreRequest, m.ValidationSet, m.ThresholdsPatch, m.AnomalyFitResult, m.TrainingRecord,
           m.AnomalyScoreResult, m.ScoredImage, m.BoxOut, m.AnomalyModel, m.AnomalyModelList]
# The subject-driven kinds' models.
SUBJECT = [m.SubjectGenerationRequest, m.SubjectModelRequest, m.TuningSettings, m.PriorPreservation,
           m.SubjectGenerationResult, m.SubjectModelResult, m.SubjectModel, m.SubjectModelList]
# Webhooks are being added to the API: the client already sends `webhook` on every submission
# and reads `Job.webhook`. Until the committed spec has the Webhook schema those fields are
# the only ones allowed to be missing from it; from then on everything must match.
WEBHOOK = [m.Webhook, m.WebhookDelivery, m.WebhookState]
REQUESTS = {m.Webhook, m.ColorizationRequest, m.Stroke, m.Guidance, m.ColorizationParity, m.VideoGenerationRequest,
            m.KvSharing, m.VideoEditRequest, m.AnomalyFitRequest, m.AnomalyScoreRequest, m.ValidationSet,
            m.ThresholdsPatch, m.SubjectGenerationRequest, m.SubjectModelRequest, m.TuningSettings, m.PriorPreservation}


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def spec_types(schema: dict, spec: dict) -> frozenset[str]:
    """A JSON schema as a set of type tokens."""
    if "$ref" in schema:
        return frozenset({f"ref:{ref_name(schema['$ref'])}"})
    if "anyOf" in schema or "oneOf" in schema:
        out: set[str] = set()
        for sub in schema.get("anyOf", schema.get("oneOf")):
            out |= spec_types(sub, spec)
        return frozenset(out)
    if "const" in schema:
        return frozenset({"enum:" + ",".join(sorted([str(schema["const"])]))})
    if "enum" in schema:
        return frozenset({"enum:" + ",".join(sorted(str(v) for v in schema["enum"]))})
    kind = schema.get("type")
    if kind == "array":
        if "prefixItems" in schema:
            inner: set[str] = set()
            for sub in schema["prefixItems"]:
                inner |= spec_types(sub, spec)
        else:
            inner = set(spec_types(schema.get("items", {}), spec))
        return frozenset({"array[" + "|".join(sorted(inner)) + "]"})
    if kind == "object":
        extra = schema.get("additionalProperties", True)
        inner = {"any"} if extra in (True, {}) else set(spec_types(extra, spec))
        return frozenset({"object[" + "|".join(sorted(inner)) + "]"})
    if kind == "string":
        return frozenset({"datetime" if schema.get("format") == "date-time" else "string"})
    if kind in ("integer", "number", "boolean", "null"):
        return frozenset({kind})
    if kind is None:
        return frozenset({"any"})
    raise AssertionError(f"unhandled schema {schema}")


def py_types(annotation: Any) -> frozenset[str]:
    """A Python annotation as the same type tokens."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        out: set[str] = set()
        for arg in typing.get_args(annotation):
            out |= py_types(arg)
        return frozenset(out)
    if origin is typing.Annotated:
        return py_types(typing.get_args(annotation)[0])
    if origin is Literal:
        return frozenset({"enum:" + ",".join(sorted(str(v) for v in typing.get_args(annotation)))})
    if origin in (list, tuple):
        inner: set[str] = set()
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                inner |= py_types(arg)
        return frozenset({"array[" + "|".join(sorted(inner or {"any"})) + "]"})
    if origin is dict:
        return frozenset({"object[" + "|".join(sorted(py_types(typing.get_args(annotation)[1]))) + "]"})
    if annotation is type(None):
        return frozenset({"null"})
    if annotation is Any:
        return frozenset({"any"})
    if isinstance(annotation, type):
        if issubclass(annotation, (BaseModel, Enum)):
            return frozenset({f"ref:{annotation.__name__}"})
        simple = {bool: "boolean", int: "integer", float: "number", str: "string", datetime: "datetime"}
        if annotation in simple:
            return frozenset({simple[annotation]})
    raise AssertionError(f"unhandled annotation {annotation!r}")


def compare(model: type[BaseModel], schema: dict, spec: dict) -> list[str]:
    """Differences between a client model and a spec object schema (empty: they agree)."""
    problems = []
    props = schema.get("properties", {})
    fields = dict(model.model_fields)
    if set(props) != set(fields):
        problems.append(f"{model.__name__}: fields differ: only in spec {sorted(set(props) - set(fields))}, "
                        f"only in client {sorted(set(fields) - set(props))}")
    required = set(schema.get("required", []))
    client_required = {name for name, f in fields.items() if f.is_required()}
    if required != client_required:
        problems.append(f"{model.__name__}: required differ: spec {sorted(required)}, client {sorted(client_required)}")
    is_request = model in REQUESTS
    for name in set(props) & set(fields):
        want = spec_types(props[name], spec)
        got = py_types(fields[name].annotation)
        if is_request and name not in required:  # optional request fields: None = not sent
            want, got = want - {"null"}, got - {"null"}
        if model is m.Job and name == "result":
            continue  # compared by test_job_result_union
        if want != got:
            problems.append(f"{model.__name__}.{name}: spec {sorted(want)}, client {sorted(got)}")
    return problems


def test_every_core_model_matches_the_spec(spec):
    schemas = spec["components"]["schemas"]
    problems = []
    for model in CORE:
        assert model.__name__ in schemas, f"{model.__name__} is gone from the spec"
        problems += compare(model, schemas[model.__name__], spec)
    assert not problems, "\n".join(problems)


def test_job_status_enum_and_job_kinds(spec):
    schemas = spec["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [s.value for s in m.JobStatus]
    kind_param = next(p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "kind")
    kinds = set().union(*(s.get("enum", []) for s in kind_param["schema"]["anyOf"] if "enum" in s))
    assert kinds and kinds <= set(vc.KIND_PATHS), f"kinds the client does not know: {kinds - set(vc.KIND_PATHS)}"
    status_param = next(p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "status")
    assert "JobStatus" in str(status_param["schema"])


def test_every_submission_route_has_its_request_model(spec):
    """Each kind's POST takes the client's request model and answers a Job; and every
    submission route of the spec (a POST answering 202 with a Job) is known to the client."""
    schemas = spec["components"]["schemas"]
    problems = []
    for kind, path in vc.KIND_PATHS.items():
        assert not route_absent(spec, path), f"{path} ({kind}) is gone from the spec"
        op = spec["paths"][path]["post"]
        body_ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        problems += compare(m.REQUEST_MODELS[kind], schemas[ref_name(body_ref)], spec)
        ok = op["responses"].get("202", {}).get("content", {}).get("application/json", {}).get("schema", {})
        assert ok.get("$ref", "").endswith("/Job"), f"{path}: 202 is not a Job"
        assert any(p["name"] == "idempotency-key" for p in op.get("parameters", [])), f"{path}: no Idempotency-Key"
    assert not problems, "\n".join(problems)
    submissions = {p for p, ops in spec["paths"].items()
                   if "post" in ops and ops["post"]["responses"].get("202", {}).get("content", {})
                   .get("application/json", {}).get("schema", {}).get("$ref", "").endswith("/Job")}
    assert submissions <= set(vc.KIND_PATHS.values()), f"routes the client lacks: {submissions - set(vc.KIND_PATHS.values())}"


def test_anomaly_models_match_the_spec(spec):
    schemas = spec["components"]["schemas"]
    problems = []
    for model in ANOMALY:
        assert model.__name__ in schemas, f"{model.__name__} is not in the spec"
        problems += compare(model, schemas[model.__name__], spec)
    assert not problems, "\n".join(problems)
    paths = spec["paths"]
    patch = paths["/v1/anomaly-models/{model_id}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ThresholdsPatch")
    for path, method, model in (("/v1/anomaly-models", "get", "AnomalyModelList"),
                                ("/v1/anomaly-models/{model_id}", "get", "AnomalyModel"),
                                ("/v1/anomaly-models/{model_id}", "patch", "AnomalyModel")):
        ok = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/" + model), (path, method)
    assert "204" in paths["/v1/anomaly-models/{model_id}"]["delete"]["responses"]


def test_subject_models_match_the_spec(spec):
    schemas = spec["components"]["schemas"]
    problems = []
    for model in SUBJECT:
        assert model.__name__ in schemas, f"{model.__name__} is not in the spec"
        problems += compare(model, schemas[model.__name__], spec)
    assert not problems, "\n".join(problems)
    paths = spec["paths"]
    for path, method, model in (("/v1/subject-models", "get", "SubjectModelList"),
                                ("/v1/subject-models/{model_id}", "get", "SubjectModel")):
        ok = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/" + model), (path, method)
    assert "204" in paths["/v1/subject-models/{model_id}"]["delete"]["responses"]


def test_webhook_models_match_the_spec(spec):
    schemas = spec["components"]["schemas"]
    problems = []
    for model in WEBHOOK:
        assert model.__name__ in schemas, f"{model.__name__} is not in the spec"
        problems += compare(model, schemas[model.__name__], spec)
    assert not problems, "\n".join(problems)


def test_job_result_union(spec):
    job = spec["components"]["schemas"]["Job"]["properties"]["result"]
    spec_refs = {ref_name(s["$ref"]) for s in job["anyOf"] if "$ref" in s}
    client = {t.__name__ for t in typing.get_args(m.JobResult) if isinstance(t, type) and issubclass(t, BaseModel)}
    assert spec_refs <= client, f"result models the client lacks: {spec_refs - client}"
    assert client == spec_refs, f"result models only in the client: {client - spec_refs}"
    assert {"object[any]", "null"} <= spec_types(job, spec)


def test_request_bodies_the_client_sends_validate_against_the_spec(spec):
    """What the typed methods put on the wire is valid for the spec's JSON schema."""
    import jsonschema

    bodies = {
        "colorize": m.ColorizationRequest(image="upl_" + "a" * 24, prompt="red", seed=1, steps=2,
                                          strokes=[{"color": "#ff0000", "points": [(1, 2), (3.5, 4)]}],
                                          guidance={"scale": 3}),
        "video.generate": m.VideoGenerationRequest(prompts=["a", "b"], kv_sharing={"steps": (2, 10)}, metrics=["cscv"]),
        "video.edit": m.VideoEditRequest(tuned_model="tvm_" + "b" * 24, edits=["x"], steps=2),
        "anomaly.fit": m.AnomalyFitRequest(name="n", images=["upl_" + "c" * 24], validation={"abnormal": []},
                                           backbone="tiny"),
        "anomaly.score": m.AnomalyScoreRequest(model_id="anm_" + "d" * 24, images=["upl_" + "c" * 24]),
        "subject.generate": m.SubjectGenerationRequest(subject_images=["upl_" + "c" * 24], subject_class="dog",
                                                       prompt="on a beach", method="expert",
                                                       tuning={"steps": 10, "prior_preservation": {"enabled": True}},
                                                       metrics=["clip_i", "dino"]),
        "subject.tune": m.SubjectModelRequest(subject_images=["upl_" + "c" * 24], subject_class="dog", rank=8,
                                              prior_preservation={"enabled": True, "class_images": 10}),
    }
    registry_spec = {"components": spec["components"]}
    for kind, body in bodies.items():
        ref = spec["paths"][vc.KIND_PATHS[kind]]["post"]["requestBody"]["content"]["application/json"]["schema"]
        schema = {**ref, "components": registry_spec["components"]}
        jsonschema.validate(dump_body(body), schema)
    # the tuned-model edit leaves the clip settings out entirely (the server refuses them with it)
    sent = m.VideoEditRequest(tuned_model="tvm_" + "b" * 24, edits=["x"], frames=None).model_dump(
        mode="json", exclude_unset=True, exclude_none=True)
    assert sent == {"tuned_model": "tvm_" + "b" * 24, "edits": ["x"]}


def test_the_comparison_notices_drift(spec):
    """The checker itself: a field added, a type changed, an enum value added, a field made
    required in a copy of the spec are each reported."""
    import copy

    schemas = spec["components"]["schemas"]
    for mutate, expect in [
        (lambda s: s["properties"].__setitem__("new_field", {"type": "string"}), "fields differ"),
        (lambda s: s["properties"].__setitem__("steps", {"type": "string"}), "ColorizationRequest.steps"),
        (lambda s: s["properties"]["output_format"]["enum"].append("avif"), "ColorizationRequest.output_format"),
        (lambda s: s["required"].append("prompt"), "required differ"),
    ]:
        changed = copy.deepcopy(schemas["ColorizationRequest"])
        mutate(changed)
        assert any(expect in p for p in compare(m.ColorizationRequest, changed, spec)), expect
    job = copy.deepcopy(schemas["Job"])
    job["properties"]["stage"] = {"type": "string"}  # no longer nullable
    assert any("Job.stage" in p for p in compare(m.Job, job, spec))
