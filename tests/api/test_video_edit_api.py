"""Tune-A-Video editing through the API (tiny profile, in-process worker)."""
from __future__ import annotations


import numpy as np
import pytest

from tests.helpers import wait_final as wait, ALICE, BOB, auth, photo


def clip_mp4(frames: int = 12, size: int = 80) -> bytes:
    """A real photo panning right: a short generated clip."""
    from models.video.media import encode_mp4

    base = np.asarray(photo(size + 2 * frames, size))
    return encode_mp4(np.stack([base[:, 2 * i: 2 * i + size] for i in range(frames)]), fps=8)


def upload(client, data: bytes, key=ALICE) -> str:
    r = client.post("/v1/uploads", files={"file": ("clip.mp4", data, "application/octet-stream")}, headers=auth(key))
    assert r.status_code == 201, r.text
    return r.json()["id"]




def test_tune_then_reuse_the_tuned_model(live):
    from models.video.media import decode_mp4

    video = upload(live, clip_mp4())
    assert live.get(f"/v1/uploads/{video}", headers=auth(ALICE)).json()["content_type"] == "video/mp4"
    body = {"video": video, "source_prompt": "a man in a space suit", "edits": ["a robot", "a bear"],
            "tune_steps": 3, "frames": 4, "width": 64, "height": 64, "steps": 3, "seed": 1, "gif": True}
    first = live.post("/v1/video-edits", json=body, headers=auth(ALICE))
    assert first.status_code == 202, first.text
    job = wait(live, first.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    pipe = live.runner.pipeline("video.edit")
    tunes = []
    original_tune = pipe.tune
    pipe.tune = lambda *a, **k: tunes.append(1) or original_tune(*a, **k)
    res = job["result"]
    assert res["tuning"] == "ran" and res["tuned_model_id"].startswith("tvm_")
    assert [v["prompt"] for v in res["videos"]] == ["a robot", "a bear"]
    for v in res["videos"]:
        frames, info = decode_mp4(live.get(v["url"].removeprefix("http://testserver")).content)
        assert info.frames == v["frames"] == 4 and (info.width, info.height) == (64, 64)
        assert live.get(v["gif_url"].removeprefix("http://testserver")).headers["content-type"] == "image/gif"

    again = live.post("/v1/video-edits", json={"tuned_model": res["tuned_model_id"], "edits": ["a cat"], "steps": 3,
                                               "seed": 1}, headers=auth(ALICE))
    assert again.status_code == 202, again.text
    second = wait(live, again.json()["id"])
    assert second["status"] == "succeeded", second["error"]
    assert second["result"]["tuning"] == "skipped" and second["result"]["tune_seconds"] == 0
    assert second["result"]["videos"][0]["frames"] == 4
    assert tunes == []  # the second job did no tuning work at all
    # another tenant cannot use it
    r = live.post("/v1/video-edits", json={"tuned_model": res["tuned_model_id"], "edits": ["x"]}, headers=auth(BOB))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tuned_model"


def test_unreadable_video_fails_with_invalid_input(live):
    fake = upload(live, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    r = live.post("/v1/video-edits", json={"video": fake, "source_prompt": "x", "edits": ["y"], "tune_steps": 1,
                                           "steps": 1}, headers=auth(ALICE))
    job = wait(live, r.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input"
    assert job["error"]["message"].startswith("video:")


@pytest.mark.parametrize("body,field", [
    ({"edits": ["a"]}, "video"),  # model-level checks name their field too, not `body`
    ({"video": "upl_" + "0" * 24, "edits": ["a"]}, "source_prompt"),
    ({"video": "upl_" + "0" * 24, "source_prompt": "s", "edits": []}, "edits"),
    ({"video": "upl_" + "0" * 24, "source_prompt": "s", "edits": ["a"], "width": 100}, "width"),
    ({"video": "upl_" + "0" * 24, "source_prompt": "s", "edits": ["a"], "frames": 49}, "frames"),
    ({"video": "upl_" + "0" * 24, "source_prompt": "s", "edits": ["a"]}, "video"),
    ({"tuned_model": "tvm_" + "0" * 24, "edits": ["a"], "frames": 4}, "frames"),
    ({"tuned_model": "tvm_" + "0" * 24, "edits": ["a"]}, "tuned_model"),
])
def test_invalid_edit_requests_name_the_field(client, body, field):
    r = client.post("/v1/video-edits", json=body, headers=auth(ALICE))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
    assert not r.json()["errors"][0]["message"].startswith(("Value error", f"{field}:"))  # no prefix, said once


def test_an_image_is_not_a_video(client):
    from tests.helpers import png_bytes

    image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo()), "image/png")},
                        headers=auth(ALICE)).json()["id"]
    r = client.post("/v1/video-edits", json={"video": image, "source_prompt": "s", "edits": ["a"]}, headers=auth(ALICE))
    assert r.status_code == 422 and "not a video" in r.json()["detail"]


def test_clip_sampling_defaults_to_the_official_rule_and_is_fixed_by_a_tuned_model(client):
    video = "upl_" + "0" * 24
    body = {"video": video, "source_prompt": "s", "edits": ["a"]}
    from service.schemas import VideoEditRequest

    params = VideoEditRequest(**body).model_dump()
    assert params["frame_stride"] == 2 and params["start_frame"] == 0  # sample_frame_rate 2, sample_start_idx 0
    assert VideoEditRequest(**body, frame_stride="spread", start_frame=5).model_dump()["frame_stride"] == "spread"
    for bad, field in (({"frame_stride": 0}, "frame_stride"), ({"frame_stride": "all"}, "frame_stride"),
                       ({"start_frame": -1}, "start_frame")):
        r = client.post("/v1/video-edits", json={**body, **bad}, headers=auth(ALICE))
        assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith(field), r.text
    r = client.post("/v1/video-edits", json={"tuned_model": "tvm_" + "0" * 24, "edits": ["a"], "frame_stride": 1},
                    headers=auth(ALICE))
    assert r.status_code == 422 and "frame_stride" in r.json()["detail"]


def test_a_clip_too_short_for_the_official_stride_fails_naming_what_it_needs(live):
    video = upload(live, clip_mp4(frames=6, size=64))
    r = live.post("/v1/video-edits", json={"video": video, "source_prompt": "a man", "edits": ["a robot"],
                                           "tune_steps": 1, "frames": 4, "width": 64, "height": 64, "steps": 1},
                  headers=auth(ALICE))
    job = wait(live, r.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input"
    assert "4 frames every 2 from frame 0 need 7" in job["error"]["message"]


def test_tuned_models_are_listed_read_and_deleted_with_their_artifacts(live, ctx):
    video = upload(live, clip_mp4())
    r = live.post("/v1/video-edits", json={"video": video, "source_prompt": "a man", "edits": ["a robot"],
                                           "tune_steps": 1, "frames": 2, "width": 64, "height": 64, "steps": 1,
                                           "seed": 1}, headers=auth(ALICE))
    job = wait(live, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    model_id = job["result"]["tuned_model_id"]

    page = live.get("/v1/video-models", headers=auth(ALICE)).json()
    assert [m["id"] for m in page["items"]] == [model_id] and page["next_cursor"] is None
    model = live.get(f"/v1/video-models/{model_id}", headers=auth(ALICE)).json()
    assert model["job_id"] == job["id"] and model["source_prompt"] == "a man" and model["tune_steps"] == 1
    assert (model["clip"]["frames"], model["clip"]["width"], model["clip"]["height"]) == (2, 64, 64)
    prefix = ctx.store.get_resource("tuned_video_model", model_id)["prefix"]
    names = ("weights.safetensors", "meta.json", "latents.safetensors")
    assert model["size_bytes"] == sum(len(ctx.objects.get(prefix + n)) for n in names) > 0

    # another tenant sees nothing of it and cannot delete it
    assert live.get("/v1/video-models", headers=auth(BOB)).json()["items"] == []
    assert live.get(f"/v1/video-models/{model_id}", headers=auth(BOB)).status_code == 404
    assert live.delete(f"/v1/video-models/{model_id}", headers=auth(BOB)).status_code == 404
    assert all(ctx.objects.exists(prefix + n) for n in names)

    assert live.delete(f"/v1/video-models/{model_id}", headers=auth(ALICE)).status_code == 204
    assert not any(ctx.objects.exists(prefix + n) for n in names)
    assert live.get(f"/v1/video-models/{model_id}", headers=auth(ALICE)).status_code == 404
    assert live.delete(f"/v1/video-models/{model_id}", headers=auth(ALICE)).status_code == 404
    r = live.post("/v1/video-edits", json={"tuned_model": model_id, "edits": ["a cat"]}, headers=auth(ALICE))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tuned_model"


def test_tuned_models_page_newest_first(client, ctx):
    from service.store.base import new_id

    ids = [new_id("tvm") for _ in range(5)]
    for i in ids:
        ctx.store.put_resource("tuned_video_model", i, "alice", {
            "prefix": f"tuned/alice/{i}/", "base_model_id": "tiny", "source_prompt": "p", "clip": {}, "tune_steps": 1,
            "job_id": "job_" + i[4:], "created_at": 0})
    seen, cursor = [], None
    while True:
        page = client.get("/v1/video-models", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=auth(ALICE)).json()
        assert len(page["items"]) <= 2
        seen += [m["id"] for m in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == ids[::-1]
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "job_" + "0" * 24}):
        r = client.get("/v1/video-models", params=bad, headers=auth(ALICE))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] in ("limit", "cursor"), r.text
