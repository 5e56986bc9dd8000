"""The models pages of the console in headless Chromium against the running service: anomaly
models (thresholds edited without refit over the histogram of their scores) and tuned video
models (listed, deleted with their artifacts)."""
from __future__ import annotations

from tests.console.conftest import ARTIFACTS, sign_in
from tests.console.test_console import UNLABELLED, upload
from tests.helpers import ALICE, BOB, png_bytes


def test_models_page_thresholds_histogram_and_deletes(page, service):
    from tests.api.test_video_edit_api import clip_mp4
    from tests.models.anomaly_data import make_benchmark, paste_defect

    bench = make_benchmark("brick", crop=64, n_train=8, n_validation=0, n_test_normal=2, n_test_per_defect=0, seed=0)
    with service.api() as api:
        train = [upload(api, png_bytes(im)) for im in bench.train]
        r = api.post("/v1/anomaly-models", json={"name": "bricks", "images": train, "backbone": "tiny",
                                                 "image_size": 64, "seed": 0})
        fit = service.wait(api, r.json()["id"])
        assert fit["status"] == "succeeded", fit["error"]
        model_id = fit["result"]["model_id"]
        defective, _ = paste_defect(bench.test[1].image, (20, 20, 20, 20), seed=0)
        images = [upload(api, png_bytes(im)) for im in (bench.test[0].image, bench.test[1].image, defective)]
        scored = service.wait(api, api.post("/v1/anomaly-scores", json={"model_id": model_id, "images": images}).json()["id"])
        assert scored["status"] == "succeeded", scored["error"]
        scores = sorted(it["score"] for it in scored["result"]["items"])
        video = api.post("/v1/uploads", files={"file": ("clip.mp4", clip_mp4(frames=4, size=64), "video/mp4")}).json()["id"]
        edit = service.wait(api, api.post("/v1/video-edits", json={
            "video": video, "source_prompt": "a man skiing", "edits": ["a bear"], "tune_steps": 1, "frames": 2,
            "frame_stride": 1, "width": 64, "height": 64, "steps": 1, "seed": 1}).json()["id"])
        assert edit["status"] == "succeeded", edit["error"]
        tuned = edit["result"]["tuned_model_id"]
        threshold = api.get(f"/v1/anomaly-models/{model_id}").json()["thresholds"]["image"]

    sign_in(page, ALICE)
    page.click("a[data-nav='models']")
    page.wait_for_selector(f"#anomaly-models li[data-model-id='{model_id}']")
    page.wait_for_selector(f"#tuned-models li[data-model-id='{tuned}']")
    assert "a man skiing" in page.inner_text(f"#tuned-models li[data-model-id='{tuned}']")
    assert page.evaluate(UNLABELLED) == []

    # the anomaly model page: the histogram of the 3 scores against the threshold
    page.click(f"#anomaly-models li[data-model-id='{model_id}'] a")
    page.wait_for_selector("svg.histogram")
    above = sum(s > threshold for s in scores)
    assert page.get_attribute(".histogram-summary", "data-above") == str(above)
    assert "3 scored images" in page.inner_text(".histogram-summary")
    # a threshold between the lowest and the next score: two anomalous, before saving
    new = (scores[0] + scores[1]) / 2
    page.fill("#threshold-image", repr(new))
    assert page.get_attribute(".histogram-summary", "data-above") == "2"
    assert page.locator("svg.histogram rect.anomalous").count() >= 1
    page.click("#threshold-save")
    page.wait_for_selector(".saved:has-text('Saved')")
    with service.api() as api:
        t = api.get(f"/v1/anomaly-models/{model_id}").json()["thresholds"]
        assert abs(t["image"] - new) < 1e-9 and t["image_method"] == "manual"
        # the next scoring uses it: no refit
        again = service.wait(api, api.post("/v1/anomaly-scores", json={"model_id": model_id, "images": images}).json()["id"])
        assert sum(it["label"] for it in again["result"]["items"]) == 2
    assert "image: manual" in page.inner_text(".threshold-methods")
    page.screenshot(path=str(ARTIFACTS / "anomaly-model-thresholds.png"), full_page=True)

    # delete the tuned video model from the list, then the anomaly model from its page
    page.click("a[data-nav='models']")
    page.get_by_role("button", name=f"Delete tuned video model {tuned}").click()
    page.wait_for_selector(f"#tuned-models li[data-model-id='{tuned}']", state="detached")
    page.click(f"#anomaly-models li[data-model-id='{model_id}'] a")
    page.click("#model-delete")
    page.wait_for_selector("#models-h")
    page.wait_for_selector(f"#anomaly-models li[data-model-id='{model_id}']", state="detached")
    with service.api() as api:
        assert api.get(f"/v1/video-models/{tuned}").status_code == 404
        assert api.get(f"/v1/anomaly-models/{model_id}").status_code == 404
    with service.api(BOB) as bob:
        assert bob.get("/v1/video-models").json()["items"] == []
