"""The job forms of the console in headless Chromium against the running service (tiny models,
tiny jobs): each form submits, the job gets what the form said, and the result shows."""
from __future__ import annotations

from tests.console.conftest import ARTIFACTS, sign_in
from tests.console.test_console import UNLABELLED
from tests.helpers import ALICE


def job_of(service, page, result_sel: str) -> dict:
    page.wait_for_selector(f"{result_sel}:not([hidden])", timeout=90_000)
    job_id = page.locator(result_sel).locator("xpath=..").locator(".job-line a").get_attribute("data-job-id")
    with service.api() as api:
        return api.get(f"/v1/jobs/{job_id}").json()


def test_video_generation_form_with_several_prompts(page, service):
    sign_in(page, ALICE)
    page.click("a[data-nav='video']")
    page.fill("#gen-prompt-1", "a cat walks on grass")
    page.fill("#gen-prompt-2", "a cat sits on grass")
    page.click("#gen-prompt-add")
    page.fill("#gen-prompt-3", "a cat sleeps")
    page.click("button[aria-label='Remove prompt 3']")
    page.click("#video-generation-form details.advanced summary")
    for sel, value in (("#gen-steps", "2"), ("#gen-width", "64"), ("#gen-height", "64"), ("#gen-seed", "3")):
        page.fill(sel, value)
    assert page.evaluate(UNLABELLED) == []
    page.click("#gen-submit")
    job = job_of(service, page, "#gen-result")
    assert job["status"] == "succeeded", job["error"]
    assert job["params"]["prompts"] == ["a cat walks on grass", "a cat sits on grass"]
    assert (job["params"]["steps"], job["params"]["width"], job["params"]["seed"]) == (2, 64, 3)
    video = page.locator("#gen-result video")
    page.wait_for_function("() => document.querySelector('#gen-result video').readyState >= 1", timeout=20_000)
    assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 64]
    download = page.locator("#gen-result a.download")
    assert download.get_attribute("download") == "video.mp4"
    assert download.get_attribute("href").split("?")[0] == job["result"]["video"]["url"].split("?")[0]
    with page.expect_download() as got:
        download.click()
    saved = got.value
    assert saved.suggested_filename == "video.mp4" and open(saved.path(), "rb").read()[4:8] == b"ftyp"
    page.screenshot(path=str(ARTIFACTS / "video-generation-form.png"), full_page=True)


def test_video_edit_form_uploads_a_clip_then_reuses_the_tuning(page, service):
    from tests.api.test_video_edit_api import clip_mp4

    clip = ARTIFACTS / "clip.mp4"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clip.write_bytes(clip_mp4(frames=6, size=64))
    sign_in(page, ALICE)
    page.goto("/console/#/video")
    page.set_input_files("#edit-clip", str(clip))
    page.fill("#edit-source", "a man in a space suit")
    page.fill("#edit-prompt-1", "a robot")
    page.click("#video-edit-form details.advanced summary")
    for sel, value in (("#edit-tune-steps", "1"), ("#edit-frames", "2"), ("#edit-stride", "1"), ("#edit-width", "64"),
                       ("#edit-height", "64"), ("#edit-steps", "1"), ("#edit-seed", "1")):
        page.fill(sel, value)
    page.check("#edit-gif")
    assert page.evaluate(UNLABELLED) == []
    page.click("#edit-submit")
    job = job_of(service, page, "#edit-result")
    assert job["status"] == "succeeded", job["error"]
    p = job["params"]
    assert p["video"].startswith("upl_") and p["source_prompt"] == "a man in a space suit" and p["edits"] == ["a robot"]
    assert (p["tune_steps"], p["frames"], p["frame_stride"], p["width"], p["steps"], p["gif"]) == (1, 2, 1, 64, 1, True)
    assert page.locator("#edit-result figure.video").count() == 1
    names = [a.get_attribute("download") for a in page.locator("#edit-result a.download").all()]
    assert names == ["edit_0.mp4", "edit_0.gif"]
    tuned = job["result"]["tuned_model_id"]
    assert page.input_value("#edit-model") == tuned  # the new tuning is selected for the next edit
    assert page.locator("#edit-clip").is_hidden()

    page.fill("#edit-prompt-1", "a bear")
    page.click("#edit-submit")
    page.wait_for_selector("#edit-result figcaption:has-text('a bear')", timeout=90_000)
    again = job_of(service, page, "#edit-result")
    assert again["params"]["tuned_model"] == tuned and again["result"]["tuning"] == "skipped"
    assert "video" not in again["params"] or again["params"]["video"] is None


def test_anomaly_fit_from_a_folder_and_a_zip_then_score_against_the_chosen_model(page, service):
    import numpy as np
    from PIL import Image

    from tests.api.test_anomaly_training_api import folder_zip
    from tests.models.anomaly_data import make_benchmark

    crops = make_benchmark("brick", crop=64, n_train=10, n_validation=0, n_test_normal=0, n_test_per_defect=2, seed=0)
    root = ARTIFACTS / "bricks"
    for sub in ("normal", "abnormal", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(crops.train):
        Image.fromarray(np.asarray(im)).save(root / "normal" / f"{i:02d}.png")
    defects = [s for s in crops.test if s.defect]
    for i, s in enumerate(defects):
        Image.fromarray(np.asarray(s.image)).save(root / "abnormal" / f"{i:02d}.png")
        Image.fromarray(s.mask.astype(np.uint8) * 255).save(root / "mask" / f"{i:02d}_mask.png")
    (ARTIFACTS / "bricks.zip").write_bytes(folder_zip(crops))

    sign_in(page, ALICE)
    page.click("a[data-nav='anomaly']")
    page.fill("#fit-name", "bricks from a folder")
    page.set_input_files("#fit-folder", str(root))
    page.wait_for_selector(f".dataset-summary:has-text('{len(crops.train)} normal, {len(defects)} abnormal, "
                           f"{len(defects)} masks')")
    page.click("#anomaly-fit-form details.advanced summary")
    page.select_option("#fit-backbone", "tiny")
    page.fill("#fit-image-size", "64")
    page.fill("#fit-seed", "0")
    assert page.evaluate(UNLABELLED) == []
    page.click("#fit-submit")
    fit = job_of(service, page, "#fit-result")
    assert fit["status"] == "succeeded", fit["error"]
    p = fit["params"]
    assert (len(p["images"]), len(p["abnormal"]), p["backbone"], p["image_size"]) == (len(crops.train), len(defects), "tiny", 64)
    assert len(p["abnormal_masks"]) == len(defects) and all(m and m.startswith("upl_") for m in p["abnormal_masks"])
    folder_model = fit["result"]["model_id"]
    assert page.get_attribute("#fit-result a.model-link", "href") == f"#/models/{folder_model}"
    page.wait_for_selector(f"#score-model option[value='{folder_model}']", state="attached")

    # the same dataset as a ZIP
    page.check("#fit-source-zip")
    page.fill("#fit-name", "bricks from a zip")
    page.set_input_files("#fit-zip", str(ARTIFACTS / "bricks.zip"))
    page.click("#fit-submit")
    page.wait_for_function(f"() => document.querySelector('#fit-result a.model-link')?.getAttribute('href') "
                           f"!== '#/models/{folder_model}'", timeout=90_000)
    zipped = job_of(service, page, "#fit-result")
    assert zipped["status"] == "succeeded" and zipped["params"]["archive"].startswith("upl_")
    assert "images" not in zipped["params"] or not zipped["params"]["images"]

    # score against the folder model, chosen in the list (the zip model is selected after its fit)
    assert page.input_value("#score-model") == zipped["result"]["model_id"]
    page.select_option("#score-model", folder_model)
    page.set_input_files("#score-images", [str(root / "normal" / "00.png"), str(root / "abnormal" / "00.png")])
    page.click("#score-submit")
    scored = job_of(service, page, "#score-result")
    assert scored["status"] == "succeeded", scored["error"]
    assert scored["params"]["model_id"] == folder_model
    rows = page.locator("#score-result table.scores tbody tr")
    assert rows.count() == 2
    for row, item, name in zip(rows.all(), scored["result"]["items"], ("00.png", "00.png")):
        cells = row.locator("th, td").all_inner_texts()
        assert cells[0] == name and abs(float(cells[1]) - item["score"]) <= 5e-3 * max(1, abs(item["score"]))
        assert cells[3] == ("anomalous" if item["label"] else "normal")
    assert page.locator("#score-result figure.anomaly").count() == 2
    assert page.locator("#score-result figure.anomaly a.download").count() >= 6  # heat map, mask, anomaly map each
    page.screenshot(path=str(ARTIFACTS / "anomaly-forms.png"), full_page=True)
    # the job page names the images this browser submitted by their file names
    page.click("#score-result a[href^='#/jobs/']")
    page.wait_for_selector("table.scores tbody tr")
    assert page.locator("table.scores tbody th").all_inner_texts() == ["00.png", "00.png"]
