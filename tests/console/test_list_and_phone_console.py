"""The jobs list shows what each job is about (prompt, prompts, model name) with a thumbnail of
its result, and every page fits a phone: no horizontal overflow at 390 px wide."""
from __future__ import annotations

import pytest

from tests.console.conftest import ARTIFACTS, sign_in
from tests.console.test_console import upload
from tests.helpers import ALICE, photo, png_bytes

PHONE = {"width": 390, "height": 844}
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


@pytest.fixture
def jobs(service):
    """A colorization with a prompt, a two-prompt video and an anomaly fit, all finished."""
    from tests.models.anomaly_data import make_benchmark

    bench = make_benchmark("brick", crop=64, n_train=6, n_validation=0, n_test_normal=0, n_test_per_defect=0, seed=0)
    with service.api() as api:
        image = upload(api, png_bytes(photo(64, 48)))
        posts = [("/v1/colorizations", {"image": image, "prompt": "a red vintage car", "steps": 1, "seed": 1}),
                 ("/v1/video-generations", {"prompts": ["a fox runs", "a fox sleeps"], "steps": 1, "width": 32,
                                            "height": 32, "seed": 1}),
                 ("/v1/anomaly-models", {"name": "phone bricks", "images": [upload(api, png_bytes(im)) for im in bench.train],
                                         "backbone": "tiny", "image_size": 64, "seed": 0})]
        out = []
        for path, body in posts:
            r = api.post(path, json=body)
            assert r.status_code == 202, r.text
            out.append(r.json()["id"])
        done = [service.wait(api, job_id) for job_id in out]
        assert all(j["status"] == "succeeded" for j in done), [j["error"] for j in done]
        return done


def test_job_rows_show_prompt_name_and_thumbnail(page, jobs):
    colorize, video, fit = jobs
    sign_in(page, ALICE)
    for job, text in ((colorize, "a red vintage car"), (video, "a fox runs → a fox sleeps"), (fit, "phone bricks")):
        page.wait_for_selector(f"tr[data-job-id='{job['id']}']")
        assert page.inner_text(f"tr[data-job-id='{job['id']}'] .job-text") == text
    for job in (colorize, video):  # a still of the result: the colorized image, the video's thumbnail
        img = page.locator(f"tr[data-job-id='{job['id']}'] .thumb img")
        img.wait_for()
        page.wait_for_function(f"() => document.querySelector(\"tr[data-job-id='{job['id']}'] .thumb img\").naturalWidth > 0")
    assert page.locator(f"tr[data-job-id='{fit['id']}'] .thumb img").count() == 0  # a fit makes no image


def test_every_page_fits_a_phone(browser, service, jobs):
    colorize, video, fit = jobs
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2,
                                  base_url=service.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        sign_in(page, ALICE)
        page.wait_for_selector(f"tr[data-job-id='{colorize['id']}'] .thumb img")
        pages = {"jobs": "#/jobs", "colorize": "#/playground", "subject": "#/subject", "video": "#/video",
                 "anomaly": "#/anomaly", "models": "#/models", "job-colorize": f"#/jobs/{colorize['id']}",
                 "job-video": f"#/jobs/{video['id']}", "model": f"#/models/{fit['result']['model_id']}"}
        for name, route in pages.items():
            page.goto(f"/console/{route}")
            page.wait_for_selector("main .panel")
            page.wait_for_load_state("networkidle")
            for details in page.locator("details.advanced summary").all():  # the advanced settings open too
                details.click()
            assert page.evaluate(OVERFLOW) <= 0, f"{name} is wider than the phone"
            # and the widest element of the page fits inside it
            widest = page.evaluate("() => Math.max(...[...document.querySelectorAll('main *')]"
                                   ".filter(e => !e.closest('.table-wrap')).map(e => e.getBoundingClientRect().right))")
            assert widest <= PHONE["width"] + 0.5, (name, widest)
            page.screenshot(path=str(ARTIFACTS / f"phone-{name}.png"), full_page=True)
        # the job list on a phone: one card per job, its text and its thumbnail still there
        page.goto("/console/#/jobs")
        row = page.locator(f"tr[data-job-id='{colorize['id']}']")
        row.wait_for()
        assert row.locator(".job-text").inner_text() == "a red vintage car"
        assert row.bounding_box()["width"] <= PHONE["width"]
        # the list itself does not scroll sideways: its rows are cards, not a wide table
        assert page.evaluate("() => { const w = document.querySelector('table.job-list').closest('.table-wrap');"
                             " return w.scrollWidth - w.clientWidth; }") <= 0
    finally:
        context.close()
    assert not errors, errors
