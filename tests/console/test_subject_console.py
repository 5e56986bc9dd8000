"""The subject playground in headless Chromium against the running service (tiny models):
in-context generation from 3 photos, a tuned subject model reused without tuning, the job
page of a subject generation, and deleting the subject model."""
from __future__ import annotations

from tests.console.conftest import ARTIFACTS, sign_in
from tests.console.test_console import UNLABELLED
from tests.helpers import ALICE


def wait_result(page, job_kind_text: str) -> str:
    page.wait_for_selector(f".result:not([hidden]) h2:text('{job_kind_text}')", timeout=90_000)
    return page.get_attribute(".job-line a", "data-job-id")


def test_subject_playground_in_context_tune_reuse_and_delete(page, service):
    from tests.api.test_subject_api import photos

    files = []
    for i, im in enumerate(photos(3)):
        path = ARTIFACTS / f"subject-{i}.png"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        im.save(path)
        files.append(str(path))
    sign_in(page, ALICE)
    page.click("a[data-nav='subject']")
    page.wait_for_selector(".subject-models .empty-note")
    page.set_input_files("#subject-photos", files)
    page.wait_for_function("() => document.querySelectorAll('.subject-thumbs img').length === 3")
    page.fill("#subject-class", "cat")
    page.fill("#subject-prompt", "wearing a red hat")
    page.click("details.advanced summary")
    for sel, value in (("#subject-steps", "2"), ("#subject-width", "64"), ("#subject-height", "64"), ("#subject-seed", "3")):
        page.fill(sel, value)
    page.check("input[name='metric'][value='clip_t']")
    assert page.evaluate(UNLABELLED) == []
    page.click("#subject-generate")
    job_id = wait_result(page, "Result")
    page.wait_for_function("() => [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator(".result figure.output").count() == 1
    assert page.locator(".result [data-metric='clip_t']").count() == 1
    with service.api() as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["params"]["method"] == "in_context"
    assert len(job["params"]["subject_images"]) == 3 and job["params"]["metrics"] == ["clip_t"]
    assert job["params"]["steps"] == 2 and job["params"]["seed"] == 3
    page.screenshot(path=str(ARTIFACTS / "subject-in-context.png"), full_page=True)

    # expert: tune a subject model (the photos are uploaded once: the same ids)
    page.check("#method-expert")
    page.fill("#tune-steps", "2")
    page.fill("#rank", "2")
    assert page.evaluate(UNLABELLED) == []
    page.click("#subject-tune")
    tune_id = wait_result(page, "Subject model")
    with service.api() as api:
        tuned = api.get(f"/v1/jobs/{tune_id}").json()
    assert tuned["kind"] == "subject.tune" and tuned["params"]["steps"] == 2 and tuned["params"]["rank"] == 2
    assert tuned["params"]["subject_images"] == job["params"]["subject_images"]
    model_id = tuned["result"]["subject_model"]
    page.wait_for_selector(f".subject-models li[data-model-id='{model_id}']")
    assert page.input_value("#subject-model") == model_id  # the new model is selected for the next generation
    assert page.locator(".tuning").is_hidden()

    page.fill("#subject-prompt", "on a beach")
    page.click("#subject-generate")
    reuse_id = wait_result(page, "Result")
    with service.api() as api:
        reuse = api.get(f"/v1/jobs/{reuse_id}").json()
    assert reuse["params"]["subject_model"] == model_id and reuse["result"]["tuning"] == "skipped"
    assert "skipped" in page.locator(".result dl.kv").inner_text()

    # the job page shows the subject photos (submitted from this browser) and the outputs
    page.goto(f"/console/#/jobs/{job_id}")
    page.wait_for_selector(".outputs img[alt^='Subject photo upl_']")
    assert page.locator(".outputs img[alt^='Subject photo upl_']").count() == 3
    assert page.locator(".outputs img[alt^='Generated image']").count() == 1
    assert page.evaluate(UNLABELLED) == []
    page.screenshot(path=str(ARTIFACTS / "job-detail-subject.png"), full_page=True)

    # delete the subject model from the list
    page.click("a[data-nav='subject']")
    page.get_by_role("button", name=f"Delete subject model {model_id}").click()
    page.wait_for_selector(".subject-models .empty-note")
    with service.api() as api:
        assert api.get(f"/v1/subject-models/{model_id}").status_code == 404
