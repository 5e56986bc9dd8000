"""Subject-driven generation and subject models through the API (tiny profile, in-process worker):
in-context from 3 photos, a tuning reused by two generations without any tuning, cancel
during tuning within one step, tenant isolation, deletion of the stored LoRA bytes, limits."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from service.storage.base import ObjectNotFound
from tests.helpers import ALICE, BOB, auth, png_bytes, wait_final

TUNING = {"steps": 3, "rank": 2, "prior_preservation": {"enabled": True, "class_images": 2, "class_image_steps": 2}}
FAST = {"steps": 2, "width": 64, "height": 64, "seed": 1}


def photos(n: int = 3) -> list[Image.Image]:
    """Real photos of one subject: crops of scikit-image's cat (chelsea), each a little apart."""
    from skimage import data

    cat = Image.fromarray(data.chelsea())  # 451x300
    return [cat.crop((20 * k, 10 * k, 20 * k + 280, 10 * k + 280)).resize((64, 64), Image.LANCZOS) for k in range(n)]


def upload(client, image: Image.Image, key=ALICE) -> str:
    r = client.post("/v1/uploads", files={"file": ("p.png", png_bytes(image), "image/png")}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post(client, path: str, body: dict, key=ALICE, status: int = 202) -> dict:
    r = client.post(path, json=body, headers=auth(key))
    assert r.status_code == status, r.text
    return r.json()


def image_of(client, item: dict) -> np.ndarray:
    r = client.get(item["url"].removeprefix("http://testserver"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    import io

    return np.asarray(Image.open(io.BytesIO(r.content)))


@pytest.fixture
def stages(ctx, monkeypatch):
    """Every (progress, stage) a worker writes."""
    seen: list[tuple[float, str]] = []
    real = ctx.store.heartbeat

    def heartbeat(job_id, attempt, lease_s, **kw):
        if kw.get("stage"):
            seen.append((kw.get("progress"), kw["stage"]))
        return real(job_id, attempt, lease_s, **kw)

    monkeypatch.setattr(ctx.store, "heartbeat", heartbeat)
    return seen


def test_in_context_generation_from_three_photos(live, stages):
    ids = [upload(live, im) for im in photos(3)]
    job = post(live, "/v1/subject-generations", {"subject_images": ids, "subject_class": "cat",
                                                 "prompt": "wearing a red hat", "num_outputs": 2,
                                                 "metrics": ["clip_i", "clip_t", "dino"], **FAST})
    assert job["kind"] == "subject.generate" and job["params"]["method"] == "in_context"
    job = wait_final(live, job["id"])
    assert job["status"] == "succeeded", job["error"]
    res = job["result"]
    assert res["method"] == "in_context" and res["tuning"] == "none" and res["subject_model"] is None
    assert res["seed"] == 1 and len(res["images"]) == 2
    for item in res["images"]:
        assert image_of(live, item).shape == (64, 64, 3) and (item["width"], item["height"]) == (64, 64)
    assert set(res["metrics"]) == {"clip_i", "clip_t", "dino"} and all(-1 <= v <= 1 for v in res["metrics"].values())
    names = [s for _, s in stages]
    assert "encoding subject" in names and "denoising 2/2" in names
    assert names.index("encoding subject") < names.index("denoising 2/2")
    assert job["model_profile"] == "tiny"


def _counting_tunes(live):
    pipe = live.runner.pipeline("subject.expert", "subject.tune")
    calls = []
    real = pipe.tune
    pipe.tune = lambda *a, **k: calls.append(1) or real(*a, **k)
    return pipe, calls


def test_tune_then_two_generations_reuse_the_subject_model_without_tuning(live, ctx, stages):
    from models.subject.lora import has_lora

    ids = [upload(live, im) for im in photos(3)]
    job = wait_final(live, post(live, "/v1/subject-models", {"subject_images": ids, "subject_class": "cat",
                                                             "seed": 3, **TUNING})["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["kind"] == "subject.tune"
    model_id = job["result"]["subject_model"]
    assert model_id.startswith("sbm_") and job["result"]["steps"] == 3
    names = [s for _, s in stages]
    assert "encoding subject" in names and "class images 2/2" in names and "tuning 3/3" in names

    model = live.get(f"/v1/subject-models/{model_id}", headers=auth(ALICE)).json()
    assert model["subject_class"] == "cat" and model["identifier"] == "sks" and model["model_profile"] == "tiny"
    assert model["training"]["steps"] == 3 and model["training"]["rank"] == 2
    assert model["training"]["prior_preservation"] is True and model["training"]["num_class_images"] == 2
    stored = ctx.store.get_resource("subject_model", model_id)
    weights = ctx.objects.get(stored["prefix"] + "weights.safetensors")
    assert len(weights) == model["size_bytes"] < 200_000  # the LoRA delta only, not a model
    assert [m["id"] for m in live.get("/v1/subject-models", headers=auth(ALICE)).json()["items"]] == [model_id]

    pipe, calls = _counting_tunes(live)
    results = []
    for prompt in ("on a beach", "in the snow"):
        job = post(live, "/v1/subject-generations", {"subject_model": model_id, "prompt": prompt, **FAST})
        assert job["params"]["method"] == "expert" and job["params"]["subject_class"] == "cat"
        job = wait_final(live, job["id"])
        assert job["status"] == "succeeded", job["error"]
        results.append(job["result"])
    assert calls == []  # zero tuning calls: both reused the stored LoRA
    for res in results:
        assert res["tuning"] == "skipped" and res["subject_model"] == model_id and res["method"] == "expert"
        assert image_of(live, res["images"][0]).shape == (64, 64, 3)
    assert not has_lora(pipe.unet)  # the warm pipeline carries no subject into the next job

    # the LoRA is what is reused: the same prompt and seed without it give another image
    with_lora = image_of(live, results[0]["images"][0])
    base = pipe.generate("a sks cat on a beach", num_inference_steps=2, width=64, height=64,
                         generator=__import__("torch").Generator().manual_seed(1)).images[0]
    assert not np.array_equal(with_lora, np.asarray(base))

    # delete: the resource and its artifact bytes
    assert live.delete(f"/v1/subject-models/{model_id}", headers=auth(ALICE)).status_code == 204
    for name in ("weights.safetensors", "meta.json"):
        with pytest.raises(ObjectNotFound):
            ctx.objects.get(stored["prefix"] + name)
    assert live.get(f"/v1/subject-models/{model_id}", headers=auth(ALICE)).status_code == 404
    r = live.post("/v1/subject-generations", json={"subject_model": model_id, "prompt": "x"}, headers=auth(ALICE))
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "subject_model"


def test_expert_without_a_subject_model_tunes_in_the_job_and_keeps_the_tuning(live):
    pipe, calls = _counting_tunes(live)
    ids = [upload(live, im) for im in photos(3)]
    job = wait_final(live, post(live, "/v1/subject-generations", {
        "subject_images": ids, "subject_class": "cat", "prompt": "on a sofa", "method": "expert",
        "tuning": {"steps": 2}, "metrics": ["clip_t"], **FAST})["id"])
    assert job["status"] == "succeeded", job["error"]
    res = job["result"]
    assert res["tuning"] == "ran" and calls == [1] and set(res["metrics"]) == {"clip_t"}
    reused = wait_final(live, post(live, "/v1/subject-generations", {"subject_model": res["subject_model"],
                                                                     "prompt": "on a sofa", **FAST})["id"])
    assert reused["result"]["tuning"] == "skipped" and calls == [1]
    # a fresh generator for sampling: with the same seed, reuse draws the same image as the tuning job
    np.testing.assert_array_equal(image_of(live, res["images"][0]), image_of(live, reused["result"]["images"][0]))


def test_cancel_during_tuning_stops_within_one_step(live, ctx):
    """The client cancels through the API while step 5 of 400 runs; the job stops at that step."""
    from models.subject.lora import has_lora

    pipe = live.runner.pipeline("subject.expert", "subject.tune")
    real = pipe.tune
    steps, reached, canceled = [], threading.Event(), threading.Event()

    def tune(*a, callback_on_step_end, **k):
        def cb(p, i, t, kw):
            if "loss" in kw:
                steps.append(i)
                if i == 5:
                    reached.set()
                    assert canceled.wait(60)
            return callback_on_step_end(p, i, t, kw)

        return real(*a, callback_on_step_end=cb, **k)

    pipe.tune = tune
    ids = [upload(live, im) for im in photos(3)]
    job = post(live, "/v1/subject-models", {"subject_images": ids, "subject_class": "cat", "steps": 400})
    assert reached.wait(120)
    assert live.get(f"/v1/jobs/{job['id']}", headers=auth(ALICE)).json()["stage"].startswith("tuning")
    r = live.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(ALICE))
    assert r.status_code == 200
    canceled.set()
    job = wait_final(live, job["id"])
    assert job["status"] == "canceled" and job["error"]["code"] == "canceled"
    assert steps == list(range(6))  # the step running when the cancel came was the last
    assert ctx.store.list_resources("subject_model", "alice") == []  # no half-tuned subject model
    assert not has_lora(pipe.unet)


def test_another_tenants_subject_model_is_404(client, ctx):
    model_id = "sbm_" + "ab" * 12
    ctx.store.put_resource("subject_model", model_id, "alice", {
        "prefix": f"subject/alice/{model_id}/", "subject_class": "dog", "identifier": "sks",
        "instance_prompt": "a photo of sks dog", "base_model": "tiny-sd-seed0", "profile": "tiny", "training": {},
        "num_parameters": 10, "size_bytes": 40, "job_id": "job_" + "ab" * 12, "created_at": 1.0})
    ctx.objects.put(f"subject/alice/{model_id}/weights.safetensors", b"x" * 40, "application/octet-stream")
    assert client.get(f"/v1/subject-models/{model_id}", headers=auth(ALICE)).status_code == 200
    r = client.get(f"/v1/subject-models/{model_id}", headers=auth(BOB))
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/subject-models", headers=auth(BOB)).json()["items"] == []
    assert client.delete(f"/v1/subject-models/{model_id}", headers=auth(BOB)).status_code == 404
    r = client.post("/v1/subject-generations", json={"subject_model": model_id, "prompt": "x"}, headers=auth(BOB))
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "subject_model"
    # still there for its owner, bytes included
    assert client.get(f"/v1/subject-models/{model_id}", headers=auth(ALICE)).status_code == 200
    assert ctx.objects.get(f"subject/alice/{model_id}/weights.safetensors") == b"x" * 40


def _gen(**kw):
    return {"subject_images": ["upl_" + "0" * 24], "subject_class": "dog", "prompt": "on a beach", **kw}


SBM = "sbm_" + "0" * 24


@pytest.mark.parametrize("path,body,field", [
    ("/v1/subject-generations", _gen(subject_images=["https://example.com/dog.png"]), "subject_images.0"),
    ("/v1/subject-generations", _gen(subject_images=["upl_" + "0" * 24] * 9), "subject_images"),
    ("/v1/subject-generations", _gen(subject_images=[]), "subject_images"),
    ("/v1/subject-generations", _gen(subject_class=None), "subject_class"),
    ("/v1/subject-generations", _gen(subject_class="  "), "subject_class"),
    ("/v1/subject-generations", _gen(prompt=""), "prompt"),
    ("/v1/subject-generations", _gen(steps=0), "steps"),
    ("/v1/subject-generations", _gen(steps=101), "steps"),
    ("/v1/subject-generations", _gen(num_outputs=5), "num_outputs"),
    ("/v1/subject-generations", _gen(width=100), "width"),
    ("/v1/subject-generations", _gen(width=1024, height=1024), "width"),
    ("/v1/subject-generations", _gen(method="painting"), "method"),
    ("/v1/subject-generations", _gen(metrics=["fid"]), "metrics.0"),
    ("/v1/subject-generations", _gen(guidance_scale=float("nan")), "guidance_scale"),
    ("/v1/subject-generations", _gen(surprise=1), "surprise"),
    ("/v1/subject-generations", _gen(subject_model=SBM, method="in_context"), "subject_model"),
    ("/v1/subject-generations", _gen(tuning={"steps": 2}), "tuning"),
    ("/v1/subject-generations", _gen(method="expert", tuning={"steps": 5000}), "tuning.steps"),
    ("/v1/subject-generations", _gen(method="expert", tuning={"rank": 64}), "tuning.rank"),
    ("/v1/subject-generations", {"subject_model": SBM, "prompt": "x", "metrics": ["dino"]}, "metrics"),
    ("/v1/subject-generations", _gen(), "subject_images.0"),  # no such upload
    ("/v1/subject-models", {"subject_images": ["upl_" + "0" * 24], "subject_class": "dog", "steps": 5000}, "steps"),
    ("/v1/subject-models", {"subject_images": ["upl_" + "0" * 24], "subject_class": "dog", "learning_rate": 0},
     "learning_rate"),
    ("/v1/subject-models", {"subject_images": ["upl_" + "0" * 24], "subject_class": "dog", "identifier": "a b"},
     "identifier"),
    ("/v1/subject-models", {"subject_images": ["upl_" + "0" * 24], "subject_class": "dog",
                            "prior_preservation": {"enabled": True, "class_images": 500}},
     "prior_preservation.class_images"),
    ("/v1/subject-models", {"subject_images": [], "subject_class": "dog"}, "subject_images"),
    ("/v1/subject-models", {"subject_images": ["upl_" + "0" * 24]}, "subject_class"),
])
def test_bad_requests_are_4xx_problems_naming_the_field(client, path, body, field):
    import json

    r = client.post(path, content=json.dumps(body), headers={**auth(ALICE), "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in r.json().get("errors") or []]
    assert field in fields, (r.status_code, r.json())


def test_limits_are_checked_on_the_effective_request(client, ctx):
    """Absent width/height mean the models' 512: a lower pixel limit refuses them; an absent
    tuning of an expert generation is the default 400 steps, over a lower step limit."""
    ids = [upload(client, im) for im in photos(1)]
    ctx.settings.max_subject_pixels = 256 * 256
    r = client.post("/v1/subject-generations", json=_gen(subject_images=ids), headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "width"
    assert r.json()["errors"][0]["limit"] == 256 * 256
    assert client.post("/v1/subject-generations", json=_gen(subject_images=ids, width=256, height=256),
                       headers=auth(ALICE)).status_code == 202
    ctx.settings.max_tune_steps = 100
    r = client.post("/v1/subject-generations", json=_gen(subject_images=ids, method="expert", width=64, height=64),
                    headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tuning.steps"
    ctx.settings.max_subject_images = 2
    r = client.post("/v1/subject-models", json={"subject_images": ids * 3, "subject_class": "dog", "steps": 10},
                    headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0] == {"field": "subject_images", "limit": 2,
                                                              "message": "3 photos; at most 2"}


def test_subject_model_quota(client, ctx):
    ids = [upload(client, im) for im in photos(1)]
    ctx.settings.max_subject_models = 1
    body = {"subject_images": ids, "subject_class": "dog", "steps": 10}
    assert client.post("/v1/subject-models", json=body, headers=auth(ALICE)).status_code == 202
    ctx.store.put_resource("subject_model", "sbm_" + "cd" * 12, "alice", {"prefix": "subject/alice/x/"})
    r = client.post("/v1/subject-models", json=body, headers=auth(ALICE))
    assert r.status_code == 429 and r.json()["code"] == "quota_exceeded"
    body["subject_images"] = [upload(client, photos(1)[0], key=BOB)]
    assert client.post("/v1/subject-models", json=body, headers=auth(BOB)).status_code == 202  # a quota per key
