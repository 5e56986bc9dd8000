"""What a job tells about itself: its log (streamed while it runs), its time split and the
weights it ran with; and what the service tells about its kinds (GET /v1/kinds)."""
from __future__ import annotations

import pytest

import visionjobs_client as vc
from tests.helpers import photo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(service):
    with service.client() as c:
        yield c


def test_logs_stream_while_the_job_runs_and_stay_readable_after(client):
    job = client.colorize(photo(128, 96), steps=6, seed=4)
    received: list[tuple[int, str, bool]] = []  # (index, line, the job was final when it came)
    final = [False]
    states = []
    for state in client.stream(job, timeout=120, on_log=lambda i, line: received.append((i, line, final[0]))):
        states.append(state)
        final[0] = state.final
    assert states[-1].status == vc.JobStatus.succeeded
    assert received, "no log frames"
    assert [i for i, _, _ in received] == list(range(len(received)))  # each line once, in order
    assert not received[0][2]  # the first lines came while the job ran, not after the end
    text = [line for _, line, _ in received]
    assert any("stage: loading model" in line for line in text)
    logs = client.logs(job)
    assert logs.lines == text and logs.total == len(text) and logs.dropped == 0
    done = states[-1]
    assert done.metrics is not None and done.metrics.queue_s >= 0 and done.metrics.run_s > 0
    assert done.metrics.load_s >= 0 and done.metrics.upload_s > 0  # the output PNG was written
    assert done.weights_fingerprint and done.weights_fingerprint.startswith("tiny:")


def test_a_reconnect_with_last_event_id_sends_only_newer_log_lines(client):
    job = client.wait(client.colorize(photo(64, 64), steps=1, seed=5), timeout=120)
    received = []
    list(client.stream(job.id, last_event_id="1", on_log=lambda i, line: received.append(i)))
    assert received == []
    list(client.stream(job.id, on_log=lambda i, line: received.append(i)))
    assert received == list(range(client.logs(job).total))


@pytest.fixture
def file_server(tmp_path):
    """A local static file server (allow-listed for URL inputs in the test service)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_url_input_is_fetched_by_the_service_and_the_job_runs_on_it(client, file_server):
    folder, base = file_server
    photo(48, 40).save(folder / "street.png")
    job = client.wait(client.colorize(f"{base}/street.png", steps=1, seed=3), timeout=120)
    assert job.status == vc.JobStatus.succeeded, job.error
    upload = client.get_upload(job.params["image"])
    assert upload.filename == "street.png" and (upload.width, upload.height) == (48, 40)
    assert (job.result.images[0].width, job.result.images[0].height) == (48, 40)
    with pytest.raises(vc.ValidationError) as err:  # not allow-listed: refused before any connection
        client.colorize("http://10.20.30.40/street.png")
    assert err.value.problem.errors[0]["field"] == "image"


def test_kinds_list_every_kind_with_a_schema_that_validates_a_real_request(client):
    import jsonschema

    from service.kinds import KINDS

    upl = client.upload(photo(64, 48)).id
    real = {"colorize": {"image": upl, "steps": 1, "seed": 2},
            "video.generate": {"prompts": ["a cat walks", "a cat runs"], "steps": 2},
            "video.edit": {"video": upl, "source_prompt": "a car", "edits": ["a red car"]},
            "anomaly.fit": {"name": "bottles", "images": [upl, upl]},
            "anomaly.score": {"model_id": "anm_" + "0" * 24, "images": [upl]},
            "subject.generate": {"subject_images": [upl], "subject_class": "dog", "prompt": "a dog on a beach"},
            "subject.tune": {"subject_images": [upl], "subject_class": "dog"}}
    listed = {k.name: k for k in client.kinds().items}
    assert set(listed) == set(KINDS) == set(real)
    for name, info in listed.items():
        jsonschema.Draft202012Validator.check_schema(info.input_schema)
        jsonschema.validate(real[name], info.input_schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**real[name], "surprise": 1}, info.input_schema)  # the API's 422 too
        assert info.path.startswith("/v1/") and info.result_schema.get("properties"), name
        assert info.workers and all(w.profile == "tiny" and w.weights_fingerprint for w in info.workers), name
    colorize = listed["colorize"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"image": upl, "steps": "many"}, colorize.input_schema)
    # the real request runs, and the job records the weights its worker reports
    job = client.wait(client.submit("colorize", real["colorize"]), timeout=120)
    assert job.status == vc.JobStatus.succeeded
    jsonschema.validate(job.model_dump(mode="json")["result"], colorize.result_schema)
    assert job.weights_fingerprint in {w.weights_fingerprint for w in colorize.workers}


def test_metrics_show_job_time_histograms_http_requests_and_live_workers(service, client):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        text = httpx.get(f"{service.url}/metrics", timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = scrape().get(("visionjobs_job_run_seconds_count", (("kind", "colorize"),)), 0)
    job = client.wait(client.colorize(photo(64, 64), steps=1, seed=6), timeout=120)
    client.get_job(job)
    after = scrape()
    assert after[("visionjobs_job_run_seconds_count", (("kind", "colorize"),))] == before + 1
    for name in ("queue", "load", "run", "upload"):
        assert ("visionjobs_job_%s_seconds_bucket" % name, (("kind", "colorize"), ("le", "+Inf"))) in after
    assert after[("visionjobs_workers_live", (("kind", "colorize"),))] >= 1
    assert after[("visionjobs_workers_ready", (("kind", "colorize"),))] >= 1
    reads = [v for (name, labels), v in after.items() if name == "http_requests_total"
             and dict(labels).get("handler") == "/v1/jobs/{job_id}" and dict(labels).get("method") == "GET"]
    assert reads and sum(reads) >= 1  # by route template, not by job id
