"""The web console in headless Chromium against a running service: the playground (strokes
drawn with the mouse reach the API in image pixels, progress moves, the result appears), the
jobs page (cancel a running job), and an anomaly result (heat map and boxes)."""
from __future__ import annotations

import os
import shutil

import httpx

from tests.console.conftest import ARTIFACTS, ROOT, sign_in
from tests.helpers import ALICE, photo, png_bytes

PHOTO_SIZE = (192, 144)
# Two strokes, as fractions of the displayed canvas: (x, y) points along each.
STROKES = [
    ("Blue", [(0.12, 0.18), (0.25, 0.24), (0.38, 0.16)]),
    ("Yellow", [(0.55, 0.62), (0.62, 0.78), (0.74, 0.84)]),
]


# Every visible control has an accessible name (a <label>, aria-label, or a button's text).
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button, canvas, video')]
    .filter(el => el.offsetParent !== null)
    .filter(el => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                    || el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON' && el.textContent.trim())))
    .map(el => el.outerHTML.slice(0, 120))"""


def small_png(src, dst, width: int = 1000) -> None:
    """A README-sized copy of a screenshot: scaled down, 256 colours (well under 300 KB)."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dst, optimize=True)


def upload(api: httpx.Client, data: bytes, name: str = "a.png") -> str:
    r = api.post("/v1/uploads", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_console_is_served_without_a_key_and_stays_out_of_the_contract(service):
    r = httpx.get(f"{service.url}/console", follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/console/" and "<title>visionjobs console</title>" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    js = httpx.get(f"{service.url}/console/js/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for bad in ("/console/nope.js", "/console/../service/app.py", "/console/%2e%2e/api/routes/console.py",
                "/console/js/../../api/routes/console.py"):
        assert httpx.get(f"{service.url}{bad}").status_code == 404, bad
    assert not [p for p in httpx.get(f"{service.url}/openapi.json").json()["paths"] if p.startswith("/console")]


def test_the_wheel_ships_every_console_file():
    """The console is served from the installed package (the API image installs a wheel)."""
    import tomllib

    service = ROOT / "service"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {}) \
        .get("package-data", {}).get("service", [])
    shipped = {p for pattern in patterns for p in service.glob(pattern)}  # globbed as setuptools does
    files = [p for p in (service / "console").rglob("*") if p.is_file()]
    assert files
    missing = [p.relative_to(service).as_posix() for p in files if p not in shipped]
    assert not missing, f"not in [tool.setuptools.package-data] service = [...] of pyproject.toml: {missing}"


def test_playground_strokes_progress_and_result(page, service):
    width, height = PHOTO_SIZE
    path = ARTIFACTS / "photo.png"
    path.write_bytes(png_bytes(photo(width, height)))
    sign_in(page, ALICE)
    page.click("a[data-nav='playground']")
    page.set_input_files("#photo", str(path))
    page.wait_for_selector(".stage[data-empty='false']")

    canvas = page.locator("canvas.strokes")
    box = canvas.bounding_box()
    for color, points in STROKES:
        page.click(f"button[aria-label='Brush colour {color}']")
        (x0, y0), rest = points[0], points[1:]
        page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=6)
        page.mouse.up()
    assert page.get_attribute(".stage", "data-strokes") == "2"
    # undo is real: a third stroke, undone
    page.mouse.click(box["x"] + 0.9 * box["width"], box["y"] + 0.1 * box["height"])
    assert page.get_attribute(".stage", "data-strokes") == "3"
    page.click("#undo")
    assert page.get_attribute(".stage", "data-strokes") == "2"

    assert page.evaluate(UNLABELLED) == []
    page.fill("#prompt", "an astronaut in an orange suit")
    page.click("details.advanced summary")
    page.fill("#steps", "20")
    page.fill("#seed", "7")
    # record every value the progress bar takes
    page.evaluate("""() => {
        const bar = document.querySelector('.run-status progress');
        window.__progress = [];
        new MutationObserver(() => window.__progress.push(bar.value))
            .observe(bar, {attributes: true, attributeFilter: ['value']});
    }""")
    fixed = page.evaluate("() => ['.run-status', '.stage', '#submit'].map(q => "
                          "{ const r = document.querySelector(q).getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })")
    # keyboard: tab from the prompt to the submit button and press Enter
    page.focus("#prompt")
    for _ in range(12):
        if page.evaluate("document.activeElement.id") == "submit":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "submit"
    page.keyboard.press("Enter")

    page.wait_for_selector(".result:not([hidden]) .compare img.after", timeout=90_000)
    page.wait_for_function("() => [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
    seen = page.evaluate("window.__progress")
    assert any(0 < v < 1 for v in seen), f"the progress bar never showed an intermediate value: {seen}"
    assert seen[-1] == 1 and all(b >= a - 1e-6 for a, b in zip(seen, seen[1:])), seen
    # no layout shift: the progress area, the photo and the button kept their place and size
    assert page.evaluate("() => ['.run-status', '.stage', '#submit'].map(q => "
                         "{ const r = document.querySelector(q).getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })") == fixed
    after = page.locator(".result .compare img.after")
    assert after.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [width, height]
    page.screenshot(path=str(ARTIFACTS / "playground-result.png"), full_page=True)
    small_png(ARTIFACTS / "playground-result.png", ARTIFACTS / "playground-docs.png")

    job_id = page.get_attribute(".job-line a", "data-job-id")
    with service.api() as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["params"]["prompt"] == "an astronaut in an orange suit"
    assert job["params"]["steps"] == 20 and job["params"]["seed"] == 7
    strokes = job["params"]["strokes"]
    assert [s["color"] for s in strokes] == ["#2f6fd6", "#f2c94c"]
    assert len(strokes) == 2
    for stroke, (_, drawn) in zip(strokes, STROKES):
        assert len(stroke["points"]) >= len(drawn) and 0 < stroke["width"] <= 64
        for x, y in stroke["points"]:
            assert 0 <= x <= width and 0 <= y <= height
        # in INPUT-IMAGE pixels, not canvas or CSS pixels: the drawn fractions times the photo's size
        for got, want in ((stroke["points"][0], drawn[0]), (stroke["points"][-1], drawn[-1])):
            assert abs(got[0] - want[0] * width) < 1.5 and abs(got[1] - want[1] * height) < 1.5, (got, want)

    # the job page shows the input (this browser submitted it) beside the output
    page.click(".result a[href^='#/jobs/']")
    page.wait_for_selector(".outputs figure.output img[alt^='Input photo']")
    page.wait_for_selector("[data-strokes='2']")
    assert page.locator(".timeline li.done").count() == 3
    assert page.evaluate(UNLABELLED) == []
    page.screenshot(path=str(ARTIFACTS / "job-detail-colorize.png"), full_page=True)
    if os.environ.get("UPDATE_CONSOLE_SCREENSHOT"):  # regenerate docs/console.png (see the README)
        shutil.copy(ARTIFACTS / "playground-docs.png", ROOT / "docs" / "console.png")


def test_jobs_page_cancels_a_running_job(page, service):
    with service.api() as api:
        image = upload(api, png_bytes(photo(96, 72)))
        r = api.post("/v1/colorizations", json={"image": image, "steps": 100, "seed": 1})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        service.wait(api, job_id, until={"running"}, timeout=90)

        page.goto("/console")
        page.fill("#api-key", "not-a-key-0123456789abcdef")
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.querySelector('#key-status').textContent.includes('refused')")
        assert page.get_attribute("#key-status", "data-state") == "error" and page.locator("table.jobs").count() == 0
        sign_in(page, ALICE)
        row = page.locator(f"tr[data-job-id='{job_id}']")
        row.wait_for()
        page.wait_for_selector(f"tr[data-job-id='{job_id}'][data-status='running']")
        # live over SSE: the row's bar moves while we watch
        first = row.locator("progress").evaluate("b => b.value")
        page.wait_for_function(f"() => document.querySelector(\"tr[data-job-id='{job_id}'] progress\").value > {first}",
                               timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "jobs-running.png"))
        assert page.evaluate(UNLABELLED) == []
        row.get_by_role("button", name=f"Cancel job {job_id}").click()
        page.wait_for_selector(f"tr[data-job-id='{job_id}'][data-status='canceled']", timeout=30_000)
        assert row.locator(".badge").inner_text() == "Canceled"
        assert row.locator("button").count() == 0  # nothing left to cancel
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "canceled" and job["error"]["code"] == "canceled"


def test_anomaly_result_shows_heat_map_and_boxes(page, service):
    from tests.models.anomaly_data import make_benchmark, paste_defect

    bench = make_benchmark("brick", crop=128, n_train=8, n_validation=4, n_test_normal=2, n_test_per_defect=0, seed=0)
    with service.api() as api:
        train = [upload(api, png_bytes(im)) for im in bench.train]
        validation = {"normal": [upload(api, png_bytes(s.image)) for s in bench.validation if s.defect is None],
                      "abnormal": [upload(api, png_bytes(s.image)) for s in bench.validation if s.defect]}
        r = api.post("/v1/anomaly-models", json={"name": "bricks", "images": train, "validation": validation,
                                                 "backbone": "tiny", "image_size": 64, "seed": 0})
        assert r.status_code == 202, r.text
        fit = service.wait(api, r.json()["id"])
        assert fit["status"] == "succeeded", fit["error"]
        normal = bench.test[0].image
        defective, _ = paste_defect(bench.test[1].image, (40, 52, 36, 36), seed=0)
        images = [upload(api, png_bytes(normal)), upload(api, png_bytes(defective))]
        r = api.post("/v1/anomaly-scores", json={"model_id": fit["result"]["model_id"], "images": images})
        scored = service.wait(api, r.json()["id"])
        assert scored["status"] == "succeeded", scored["error"]
    items = scored["result"]["items"]
    assert sum(len(it["boxes"]) for it in items) >= 1, items  # the pasted patch is found

    sign_in(page, ALICE)
    page.goto(f"/console/#/jobs/{scored['id']}")
    figures = page.locator("figure.anomaly")
    figures.first.wait_for()
    assert figures.count() == len(items)
    table = page.locator("table.scores tbody tr")
    assert table.count() == len(items)  # a score table: image, raw score, label
    for row, item in zip(table.all(), items):
        cells = row.locator("th, td").all_inner_texts()
        assert cells[0] == item["image"] and cells[3] == ("anomalous" if item["label"] else "normal")
    for i, item in enumerate(items):
        fig = page.locator(f"figure.anomaly[data-image='{item['image']}']")
        heat = fig.locator("img.heat")
        heat.evaluate("i => i.decode()")
        assert heat.evaluate("i => i.naturalWidth") == 128  # the heat map at the scored image's size
        page.wait_for_selector(f"figure.anomaly[data-image='{item['image']}'] .overlay-wrap[data-ready='true']")
        assert fig.locator(".anomaly-box").count() == len(item["boxes"])
        # each box sits where the API says, scaled to the displayed image
        img_box = heat.bounding_box()
        for el, b in zip(fig.locator(".anomaly-box").all(), item["boxes"]):
            got = el.bounding_box()
            scale = img_box["width"] / 128
            assert abs(got["x"] - (img_box["x"] + b["x"] * scale)) < 2
            assert abs(got["width"] - b["w"] * scale) < 3
        assert ("Anomalous" if item["label"] else "Normal") in fig.inner_text()
    page.screenshot(path=str(ARTIFACTS / "anomaly-result.png"), full_page=True)
    # the boxes can be hidden from the keyboard
    defective_fig = page.locator(f"figure.anomaly[data-image='{images[1]}']")
    checkbox = defective_fig.get_by_label("Show boxes")
    checkbox.focus()
    page.keyboard.press("Space")
    assert not checkbox.is_checked() and defective_fig.locator(".boxes").is_hidden()


def test_video_result_plays_in_the_page(page, service):
    with service.api() as api:
        r = api.post("/v1/video-generations", json={"prompts": ["a cat walks on grass", "a cat sits on grass"],
                                                    "steps": 2, "width": 64, "height": 64, "seed": 3})
        assert r.status_code == 202, r.text
        job = service.wait(api, r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
    sign_in(page, ALICE)
    page.goto(f"/console/#/jobs/{job['id']}")
    video = page.locator("figure.video video")
    video.wait_for()
    assert video.get_attribute("src").split("?")[0] == job["result"]["video"]["url"].split("?")[0]  # signed per read
    # Chromium decodes the H.264 MP4: metadata loads and the frame size is the job's
    page.wait_for_function("() => document.querySelector('figure.video video').readyState >= 1", timeout=20_000)
    assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 64]
    assert video.evaluate("v => v.duration") > 0
    page.screenshot(path=str(ARTIFACTS / "video-result.png"), full_page=True)


def test_anomaly_model_page_shows_test_metrics_and_training(page, service):
    """A Reverse Distillation model: the fit job links to the model page, which shows the held-out
    test metrics and one history row per epoch."""
    from tests.api.test_anomaly_training_api import folder_zip
    from tests.models.anomaly_data import make_benchmark

    crops = make_benchmark("brick", crop=64, n_train=12, n_validation=0, n_test_normal=0, n_test_per_defect=2, seed=0)
    with service.api() as api:
        archive = upload(api, folder_zip(crops), name="bricks.zip")
        r = api.post("/v1/anomaly-models", json={"name": "bricks", "model": "reverse_distillation", "archive": archive,
                                                 "backbone": "tiny", "image_size": 64, "seed": 0, "max_epochs": 3,
                                                 "patience": 0, "batch_size": 4})
        assert r.status_code == 202, r.text
        fit = service.wait(api, r.json()["id"])
        assert fit["status"] == "succeeded", fit["error"]
        model = api.get(f"/v1/anomaly-models/{fit['result']['model_id']}").json()

    sign_in(page, ALICE)
    page.goto(f"/console/#/jobs/{fit['id']}")
    page.click("a.model-link")
    page.wait_for_selector("[data-metric='image_auroc']")
    assert page.url.endswith(f"#/models/{model['id']}")
    assert "Reverse Distillation" in page.inner_text("main")
    for key in ("image_auroc", "image_f1", "pixel_auroc"):
        shown = page.inner_text(f"[data-metric='{key}']")
        assert abs(float(shown) - model["test_metrics"][key]) < 5e-3, (key, shown, model["test_metrics"])
    rows = page.locator("table.history tbody tr")
    assert rows.count() == 3 == len(model["training"]["history"])
    best = page.locator(f"table.history tr[data-epoch='{model['training']['best_epoch']}']")
    assert "best" in best.inner_text()
    assert page.evaluate(UNLABELLED) == []
