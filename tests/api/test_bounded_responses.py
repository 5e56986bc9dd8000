"""Responses whose size does not follow the request's: capped 422s, list pages without bulky params."""
from __future__ import annotations

from service.core.errors import MAX_LISTED_ERRORS
from tests.helpers import ALICE, auth, photo, png_bytes


def test_a_422_lists_the_first_errors_and_counts_them_all(client):
    body = {"image": "upl_" + "0" * 24, **{f"unknown_{i}": 1 for i in range(3000)}}  # one error per field
    r = client.post("/v1/colorizations", json=body, headers=auth(ALICE))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert len(problem["errors"]) == MAX_LISTED_ERRORS and problem["errors_total"] == 3000
    assert problem["errors"][0]["field"] == "unknown_0" and "(and 2950 more)" in problem["detail"]
    assert len(r.content) < 20_000  # all of them: about 400 KB
    small = client.post("/v1/colorizations", json={"image": "upl_" + "0" * 24, "steps": 0},
                        headers=auth(ALICE)).json()
    assert small["errors_total"] == len(small["errors"]) == 1  # small ones are whole


def test_long_arrays_stop_validating_at_their_first_bad_item(client):
    bad = [["x", "y"]] * 4000  # 8000 invalid coordinates in one 40 KB body
    body = {"image": "upl_" + "0" * 24, "strokes": [{"color": "#112233", "points": bad}] * 20}
    r = client.post("/v1/colorizations", json=body, headers=auth(ALICE))
    problem = r.json()
    assert r.status_code == 422 and problem["errors"][0]["field"] == "strokes.0.points.0.0"
    assert problem["errors_total"] <= 2  # not 160,000


def test_list_pages_elide_bulky_params_and_the_job_has_them_whole(client):
    image = client.post("/v1/uploads", files={"file": ("a.png", png_bytes(photo(96, 72)), "image/png")},
                        headers=auth(ALICE)).json()["id"]
    points = [[float(i % 96), float(i % 72)] for i in range(3000)]
    strokes = [{"color": "#cc2200", "width": 4, "points": points} for _ in range(3)]
    job = client.post("/v1/colorizations", json={"image": image, "strokes": strokes, "prompt": "a red car"},
                      headers=auth(ALICE)).json()
    page = client.get("/v1/jobs", headers=auth(ALICE))
    listed = page.json()["items"][0]
    assert listed["id"] == job["id"] and listed["params"]["prompt"] == "a red car"
    assert listed["params"]["strokes"][0]["points"] == {"elided": "array", "length": 3000}
    assert listed["params"]["strokes"][0]["color"] == "#cc2200"
    assert len(page.content) < 5_000  # the job's own document is about 100 KB
    full = client.get(f"/v1/jobs/{job['id']}", headers=auth(ALICE)).json()
    assert full["params"]["strokes"][2]["points"] == points
