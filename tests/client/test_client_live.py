"""The client against a running service (`visionjobs run` subprocess, tiny models, API keys):
every job kind, uploads of every source type, wait / stream / cancel / download,
idempotency, typed errors, and the async client doing the same."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import standardwebhooks
from PIL import Image

import visionjobs_client as vc
from tests.helpers import BOB, photo, png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(service):
    with service.client() as c:
        yield c


def test_uploads_from_a_path_bytes_a_pil_image_and_a_numpy_array(client, tmp_path):
    img = photo(40, 30)
    img.save(tmp_path / "p.jpg", quality=95)
    by_path = client.upload(tmp_path / "p.jpg")
    by_str = client.upload(str(tmp_path / "p.jpg"))
    by_bytes = client.upload(png_bytes(img), filename="b.png")
    by_file = client.upload(open(tmp_path / "p.jpg", "rb"))
    by_pil = client.upload(img)
    by_array = client.upload(np.asarray(img))
    by_gray = client.upload(np.asarray(img.convert("L")))
    for up in (by_path, by_str, by_bytes, by_file, by_pil, by_array, by_gray):
        assert up.id.startswith("upl_") and (up.width, up.height) == (40, 30)
    assert by_path.content_type == "image/jpeg" and by_path.filename == "p.jpg" and by_file.filename == "p.jpg"
    assert by_pil.content_type == by_array.content_type == "image/png"
    assert by_path.sha256 == by_str.sha256 == by_file.sha256
    assert client.get_upload(by_array.id) == by_array


def test_colorize_wait_and_download_a_png_of_the_input_size(client, tmp_path):
    source = photo(123, 77)  # odd size, passed as a PIL image: uploaded on the way
    job = client.colorize(source, prompt="a red suit", seed=7, steps=2,
                          strokes=[{"color": "#ff0000", "width": 6, "points": [[10, 10], [30, 20]]}])
    assert job.kind == "colorize" and job.params["steps"] == 2 and job.params["image"].startswith("upl_")
    done = client.wait(job, timeout=120)
    assert done.status == vc.JobStatus.succeeded, done.error
    assert isinstance(done.result, vc.ColorizationResult) and done.result.seed == 7
    out = done.result.images[0]
    assert (out.width, out.height) == source.size
    path = client.download(out, tmp_path)
    assert path.name == "output_0.png"
    img = Image.open(path)
    assert img.format == "PNG" and img.size == source.size
    assert client.download(out.model_dump(mode="json")) == path.read_bytes()  # a file dict, into memory
    files = client.download_outputs(done, tmp_path / "all")
    assert [p.name for p in files] == ["output_0.png"]


def test_stream_events_until_final(client):
    job = client.colorize(photo(96, 64), steps=4, seed=1)
    states = list(client.stream(job, timeout=120))
    assert states[-1].status == vc.JobStatus.succeeded and all(not s.final for s in states[:-1])
    progress = [s.progress for s in states]
    assert progress == sorted(progress) and progress[-1] == 1.0
    # a stream of a final job yields that final state once
    again = list(client.stream(job.id))
    assert len(again) == 1 and again[0].status == vc.JobStatus.succeeded


def test_cancel_a_running_job(client):
    job = client.colorize(photo(512, 512), steps=100, seed=3)
    for state in client.stream(job, timeout=120):
        if state.status == vc.JobStatus.running:
            canceled = client.cancel(job)
            break
    else:
        pytest.fail("the job never ran")
    assert canceled.id == job.id
    final = client.wait(job, timeout=60)
    assert final.status == vc.JobStatus.canceled and final.error.code == "canceled"
    with pytest.raises(vc.JobFailed):
        final.raise_for_status()
    assert client.cancel(final).status == vc.JobStatus.canceled  # final: unchanged


def test_idempotency_key_returns_the_same_job(client):
    image = client.upload(photo(64, 64))
    first = client.colorize(image, steps=1, seed=2, idempotency_key="client-test-1")
    again = client.colorize(image.id, steps=1, seed=2, idempotency_key="client-test-1")
    other = client.colorize(image, steps=1, seed=2)  # a fresh key per call
    assert again.id == first.id and other.id != first.id
    client.wait(other, timeout=60)


def test_a_422_is_a_validation_error_naming_the_field(client):
    image = client.upload(photo(64, 48))
    with pytest.raises(vc.ValidationError) as err:
        client.colorize(image, steps=1000)
    assert err.value.status == 422 and err.value.code == "validation_error"
    assert err.value.fields == ["steps"] and err.value.errors[0]["limit"] == 100
    with pytest.raises(vc.ValidationError) as err:
        client.colorize(image, strokes=[vc.Stroke(color="#00ff00", points=[(5, 5), (500, 5)])])
    assert err.value.fields == ["strokes.0.points.1"]


def test_404_401_and_tenants(service, client):
    with pytest.raises(vc.NotFound) as err:
        client.get_job("job_" + "0" * 24)
    assert err.value.code == "not_found" and err.value.problem.instance.endswith("job_" + "0" * 24)
    job = client.colorize(photo(64, 64), steps=1)
    with service.client(BOB) as bob:
        with pytest.raises(vc.NotFound):
            bob.get_job(job.id)  # another tenant's job is indistinguishable from none
        with pytest.raises(vc.NotFound):
            bob.cancel(job.id)
    with service.client("not-a-key-0123456789") as stranger, pytest.raises(vc.Unauthorized) as err:
        stranger.list_jobs()
    assert err.value.status == 401
    client.wait(job, timeout=60)


def test_list_and_page_through_jobs(client):
    a = client.colorize(photo(64, 64), steps=1)
    b = client.colorize(photo(64, 64), steps=1)
    page = client.list_jobs(kind="colorize", limit=1)
    assert [j.id for j in page.items] == [b.id] and page.next_cursor
    assert client.list_jobs(kind="colorize", cursor=page.next_cursor, limit=1).items[0].id == a.id
    every = [j.id for j in client.iter_jobs(kind="colorize", page_size=2)]
    assert every[:2] == [b.id, a.id] and len(every) == len(set(every))
    client.wait(b, timeout=60)
    assert b.id in {j.id for j in client.list_jobs(status=vc.JobStatus.succeeded, limit=100).items}


def test_async_client_parity(service, tmp_path):
    async def go():
        async with service.aclient() as vj:
            up = await vj.upload(np.asarray(photo(80, 60)))
            job = await vj.colorize(up, steps=2, seed=5)
            states = [s async for s in vj.stream(job, timeout=120)]
            assert states[-1].status == vc.JobStatus.succeeded
            done = await vj.wait(job, timeout=10)
            files = await vj.download_outputs(done, tmp_path)
            assert Image.open(files[0]).size == (80, 60)
            again = await vj.colorize(up, steps=2, seed=5, idempotency_key="async-1")
            assert (await vj.colorize(up.id, steps=2, seed=5, idempotency_key="async-1")).id == again.id
            assert (await vj.cancel(again)).id == again.id
            page = await vj.list_jobs(limit=2)
            assert len(page.items) == 2
            assert [j.id async for j in vj.iter_jobs(page_size=50)][:1] == [again.id]
            with pytest.raises(vc.ValidationError) as err:
                await vj.colorize(up, num_outputs=99)
            assert err.value.fields == ["num_outputs"]
            with pytest.raises(vc.NotFound):
                await vj.get_job("job_" + "f" * 24)
            return await vj.wait(again, timeout=60)

    assert asyncio.run(go()).final


def test_video_generate(client):
    from models.video.media import decode_mp4

    job = client.generate_video(["a red fox", "a snowy field"], steps=2, width=32, height=32, seed=1, fps=8)
    done = client.wait(job, timeout=120)
    assert done.status == vc.JobStatus.succeeded, done.error
    res = done.result
    assert isinstance(res, vc.VideoGenerationResult) and res.segments == 3  # 2 prompts + 1 transition
    frames, info = decode_mp4(client.download(res.video))
    assert info.frames == res.video.frames and (info.width, info.height) == (32, 32)
    assert Image.open(io.BytesIO(client.download(res.thumbnail_url))).size == (32, 32)


def test_video_edit_then_reuse_the_tuning(client, tmp_path):
    from tests.api.test_video_edit_api import clip_mp4

    job = client.edit_video(clip_mp4(frames=6, size=64), source_prompt="a man in a space suit", edits=["a robot"],
                            tune_steps=2, frames=4, frame_stride=1, width=64, height=64, steps=2, seed=1)
    done = client.wait(job, timeout=120)
    assert done.status == vc.JobStatus.succeeded, done.error
    assert isinstance(done.result, vc.VideoEditResult) and done.result.tuning == "ran"
    files = client.download_outputs(done, tmp_path)
    assert [p.name for p in files] == ["edit_0.mp4"] and files[0].read_bytes()[4:8] == b"ftyp"
    reuse = client.wait(client.edit_video(tuned_model=done.result.tuned_model_id, edits=["a bear"], steps=2, seed=1),
                        timeout=120)
    assert reuse.status == vc.JobStatus.succeeded, reuse.error
    assert reuse.result.tuning == "skipped" and reuse.result.videos[0].frames == 4


def test_tuned_video_models_listed_read_and_deleted(service, client):
    from tests.api.test_video_edit_api import clip_mp4

    done = client.wait(client.edit_video(clip_mp4(frames=4, size=64), source_prompt="a man", edits=["a robot"],
                                         tune_steps=1, frames=2, frame_stride=1, width=64, height=64, steps=1, seed=1),
                       timeout=120)
    assert done.status == vc.JobStatus.succeeded, done.error
    model_id = done.result.tuned_model_id
    model = client.get_video_model(model_id)
    assert isinstance(model, vc.TunedVideoModel) and model.job_id == done.id and model.clip["frames"] == 2
    assert model.size_bytes and model.size_bytes > 0
    assert model_id in [m.id for m in client.iter_video_models(page_size=1)]
    with service.client(BOB) as bob:
        assert model_id not in [m.id for m in bob.iter_video_models()]
        with pytest.raises(vc.NotFound):
            bob.get_video_model(model_id)
        with pytest.raises(vc.NotFound):
            bob.delete_video_model(model_id)

    async def go():
        async with service.aclient() as vj:
            page = await vj.list_video_models(limit=100)
            assert isinstance(page, vc.TunedVideoModelPage) and model_id in [m.id for m in page.items]
            assert model_id in [m.id async for m in vj.iter_video_models(page_size=1)]
            assert (await vj.get_video_model(model_id)).size_bytes == model.size_bytes
            await vj.delete_video_model(model_id)
            with pytest.raises(vc.NotFound):
                await vj.get_video_model(model_id)

    asyncio.run(go())
    assert model_id not in [m.id for m in client.iter_video_models()]
    with pytest.raises(vc.ValidationError) as err:  # its artifacts are gone: an edit cannot reuse it
        client.edit_video(tuned_model=model_id, edits=["a bear"])
    assert err.value.fields == ["tuned_model"]


def test_anomaly_fit_score_and_manage_the_model(client, tmp_path):
    from tests.models.anomaly_data import make_benchmark, paste_defect

    bench = make_benchmark("brick", crop=64, n_train=6, n_validation=0, n_test_normal=2, n_test_per_defect=0, seed=0)
    fit = client.fit_anomaly_model(bench.train, name="brick", backbone="tiny", image_size=64, seed=0)  # PIL images
    fitted = client.wait(fit, timeout=120)
    assert fitted.status == vc.JobStatus.succeeded, fitted.error
    assert isinstance(fitted.result, vc.AnomalyFitResult) and fitted.result.counts["train"] == 6
    normal = bench.test[0].image
    defective, _ = paste_defect(normal, (20, 20, 24, 24), seed=0)
    scored = client.wait(client.score_anomalies(fitted, [np.asarray(normal), defective]), timeout=120)
    assert scored.status == vc.JobStatus.succeeded, scored.error
    items = scored.result.items
    assert len(items) == 2 and all(it.image.startswith("upl_") for it in items)
    assert items[1].score > items[0].score and all(isinstance(b, vc.BoxOut) for b in items[1].boxes)
    assert Image.open(io.BytesIO(client.download(items[1].heat_map_url))).size == (64, 64)
    names = [p.name for p in client.download_outputs(scored, tmp_path)]
    assert len(names) == 8 and len(set(names)) == 8  # heat map, mask, anomaly map and segmentation per image

    model_id = fitted.result.model_id
    assert model_id in [m.id for m in client.list_anomaly_models().items]
    patched = client.update_anomaly_model(model_id, image_threshold=max(it.score for it in items) * 2)
    assert patched.thresholds["image_method"] == "manual"
    again = client.wait(client.score_anomalies(model_id, [items[1].image]), timeout=120)
    assert again.result.items[0].label is False
    client.delete_anomaly_model(model_id)
    with pytest.raises(vc.NotFound):
        client.get_anomaly_model(model_id)


def test_webhook_delivery_verifies_with_the_client_helper(client, receiver):
    import time

    secret = "webhook-secret-0123456789"
    job = client.colorize(photo(64, 64), steps=1, webhook=vc.Webhook(url=receiver.url, secret=secret,
                                                                      events=["running", "succeeded"]))
    assert job.webhook is not None and job.webhook.url == receiver.url and "secret" not in job.webhook.model_dump()
    assert client.wait(job, timeout=60).succeeded
    deadline = time.monotonic() + 30
    while len(receiver.got) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    events = []
    for headers, body in receiver.got:
        payload = vc.verify_webhook(secret, body, headers)
        assert standardwebhooks.Webhook(secret.encode()).verify(body, headers) == payload  # the standard's own check
        assert payload["job"]["id"] == job.id and payload["job"]["status"] == payload["event"]  # as of the event
        events.append(payload["event"])
        with pytest.raises(vc.WebhookSignatureError):
            vc.verify_webhook("another-secret-0123456789", body, headers)
    assert sorted(events) == ["running", "succeeded"]
    while time.monotonic() < deadline:
        state = client.get_job(job).webhook
        if state.deliveries.get("succeeded") and state.deliveries["succeeded"].status == "delivered":
            break
        time.sleep(0.1)
    assert state.deliveries["succeeded"].status == "delivered" and state.deliveries["succeeded"].attempts == 1


def test_subject_in_context_tune_reuse_and_manage_the_model(service, client, tmp_path):
    from tests.api.test_subject_api import photos

    cats = photos(3)
    job = client.wait(client.generate_subject(cats, subject_class="cat", prompt="wearing a hat", steps=2, width=64,
                                              height=64, seed=1, metrics=["clip_t"]), timeout=120)
    assert job.status == vc.JobStatus.succeeded, job.error
    assert isinstance(job.result, vc.SubjectGenerationResult) and job.result.method == "in_context"
    assert job.result.tuning == "none" and set(job.result.metrics) == {"clip_t"}
    assert [p.name for p in client.download_outputs(job, tmp_path)] == ["output_0.png"]

    tuned = client.wait(client.tune_subject(cats, subject_class="cat", steps=2, rank=2, seed=1), timeout=120)
    assert tuned.status == vc.JobStatus.succeeded, tuned.error
    assert isinstance(tuned.result, vc.SubjectModelResult) and tuned.result.subject_model.startswith("sbm_")
    reuse = client.wait(client.generate_subject(prompt="in the snow", subject_model=tuned, steps=2, width=64,
                                                height=64, seed=1), timeout=120)  # the finished job names the model
    assert reuse.status == vc.JobStatus.succeeded, reuse.error
    assert reuse.result.tuning == "skipped" and reuse.result.subject_model == tuned.result.subject_model
    model = client.get_subject_model(tuned.result.subject_model)
    assert isinstance(model, vc.SubjectModel) and model.subject_class == "cat" and model.training["rank"] == 2
    assert model.id in [m.id for m in client.list_subject_models().items]
    with service.client(BOB) as bob, pytest.raises(vc.NotFound):
        bob.get_subject_model(model.id)
    with pytest.raises(vc.ValidationError) as err:
        client.generate_subject(prompt="x", subject_model=model.id, method="in_context")
    assert err.value.fields == ["subject_model"]

    async def go():
        async with service.aclient() as vj:
            assert model.id in [m.id for m in (await vj.list_subject_models()).items]
            assert (await vj.get_subject_model(model.id)).size_bytes == model.size_bytes
            again = await vj.wait(await vj.generate_subject(prompt="on a boat", subject_model=model.id, steps=2,
                                                            width=64, height=64, seed=1), timeout=120)
            assert again.result.tuning == "skipped"
            await vj.delete_subject_model(model.id)
            with pytest.raises(vc.NotFound):
                await vj.get_subject_model(model.id)
            tuned2 = await vj.wait(await vj.tune_subject(cats[:1], subject_class="cat", steps=1, rank=1),
                                   timeout=120)
            assert tuned2.status == vc.JobStatus.succeeded, tuned2.error
            await vj.delete_subject_model(tuned2.result.subject_model)

    asyncio.run(go())
    assert model.id not in [m.id for m in client.list_subject_models().items]
