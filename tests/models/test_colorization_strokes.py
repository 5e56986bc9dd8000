"""Stroke hints: vector stroke geometry, raster stroke images, the mask / masked-hint
conventions, validation, and what reaches the UNet. Tiny and fast: no model runs except the
last two tests (tiny pipeline, 1-2 steps)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from models.colorization.lab import prepare_input
from models.colorization.stroke_spec import parse_color, validate_strokes
from models.colorization.strokes import MIN_RADIUS, build_stroke_hint, raster_strokes, render_vector_strokes


def reference_coverage(points, radius, h, w):
    """Brute force: pixel (i, j) is covered when its centre (j + .5, i + .5) lies within
    `radius` of some segment of the polyline (a point: of the point)."""
    pts = [np.asarray(p, float) for p in points]
    segs = list(zip(pts[:-1], pts[1:])) if len(pts) > 1 else [(pts[0], pts[0])]
    out = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            c = np.array([j + 0.5, i + 0.5])
            for a, b in segs:
                d = b - a
                t = 0.0 if not d.any() else min(1.0, max(0.0, float((c - a) @ d / (d @ d))))
                if np.linalg.norm(c - (a + t * d)) <= radius:
                    out[i, j] = True
                    break
    return out


def stroke(color, width, *points):
    return {"color": color, "width": width, "points": [list(p) for p in points]}


# ---------------------------------------------------------------- geometry


def test_line_geometry_round_caps():
    colors, cover = render_vector_strokes([stroke("#ff0000", 8, (10, 32), (50, 32))], (64, 64), (64, 64))
    r = 4.0
    # body: every pixel whose centre is within the segment span and 4 px of the line
    assert cover[28:36, 10:50].all()
    assert not cover[27].any() and not cover[36].any()  # centres 27.5 / 36.5 are 4.5 away
    # round cap: (52, 32) is 2.55 from the end point (in); the cap's corner (53, 35) is 4.95 away
    # (a square cap would include it); (54, 32) is 4.53 away
    assert cover[32, 52] and not cover[35, 53] and not cover[32, 54]
    assert not cover[35, 6] and cover[32, 7]  # the same at the start
    # area close to the capsule's 40 * 8 + pi * 4^2
    assert abs(cover.sum() - (40 * 2 * r + math.pi * r * r)) < 25
    assert np.array_equal(cover, reference_coverage([(10, 32), (50, 32)], r, 64, 64))
    assert (colors[cover] == [255, 0, 0]).all() and (colors[~cover] == 0).all()


def test_polyline_round_join_matches_brute_force():
    pts = [(8, 8), (40, 12), (20, 50), (55, 58)]
    _, cover = render_vector_strokes([stroke("#00ff00", 7, *pts)], (64, 64), (64, 64))
    assert np.array_equal(cover, reference_coverage(pts, 3.5, 64, 64))


def test_single_point_is_a_dot():
    _, cover = render_vector_strokes([stroke("#0000ff", 5, (20.5, 20.5))], (64, 64), (64, 64))
    # lattice points within 2.5 of a lattice point: 21
    assert cover.sum() == 21 and cover[20, 20] and cover[20, 22] and not cover[20, 23] and not cover[22, 22]
    # a hairline dot never vanishes: radius floor sqrt(2)/2 reaches the nearest centre
    _, thin = render_vector_strokes([stroke("#0000ff", 0.1, (10.5, 10.5))], (64, 64), (64, 64))
    assert thin.sum() == 1 and thin[10, 10]
    _, corner = render_vector_strokes([stroke("#0000ff", 0.1, (10.0, 10.0))], (64, 64), (64, 64))
    assert corner.sum() == 4 and corner[9:11, 9:11].all()
    assert MIN_RADIUS > math.sqrt(2) / 2


def test_input_coordinates_scale_to_the_working_size():
    big = [stroke("#123456", 16, (40, 64), (200, 64), (200, 100))]
    small = [stroke("#123456", 4, (10, 16), (50, 16), (50, 25))]
    a = render_vector_strokes(big, (256, 128), (64, 32))
    b = render_vector_strokes(small, (64, 32), (64, 32))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # anisotropic rounding of the sides: x and y scale separately, the width by their mean
    _, c = render_vector_strokes([stroke("#123456", 8, (0, 50), (100, 50))], (100, 100), (128, 64))
    rows = np.nonzero(c.any(axis=1))[0]
    assert rows.min() <= 32 <= rows.max() and c[:, 0].any() and c[:, 127].any()


def test_later_strokes_paint_over_earlier_ones():
    s = [stroke("#ff0000", 10, (10, 10), (50, 10)), stroke("#00ff00", 10, (30, 0), (30, 40))]
    colors, cover = render_vector_strokes(s, (64, 64), (64, 64))
    assert colors[10, 30].tolist() == [0, 255, 0] and colors[10, 12].tolist() == [255, 0, 0]
    assert cover[10, 30] and cover[30, 30] and not cover[40, 10]


def test_points_outside_the_image_are_clipped_not_fatal():
    colors, cover = render_vector_strokes([stroke("#ff00ff", 6, (-20, 10), (80, 10))], (64, 64), (64, 64))
    assert cover[10].all() and cover.sum() == 64 * 6


# ---------------------------------------------------------------- mask and masked hint


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((70, 45), Image.LANCZOS)


def test_stroke_hint_mask_and_masked_hint(photo):
    prepared = prepare_input(photo, 64, 192)  # working 128 x 64
    strokes = [stroke("#ff8000", 12, (10, 10), (30, 20)), stroke("#2040c0", 3, (60, 30))]
    sh = build_stroke_hint(prepared, strokes)
    colors, cover = render_vector_strokes(strokes, (70, 45), (128, 64))
    assert cover.any() and (~cover).any()
    # original convention: 1 = no stroke (generate), 0 = stroke
    assert np.array_equal(sh.mask, (~cover).astype(np.float32))
    # hint: L replicated to 3 channels, stroke colours painted in
    assert np.array_equal(sh.hint[cover], colors[cover])
    l3 = np.repeat(prepared.l_working[..., None], 3, axis=2)
    assert np.array_equal(sh.hint[~cover], l3[~cover])
    # masked hint: hint in [-1, 1] under strokes, exactly 0 elsewhere
    mh = sh.masked_hint
    np.testing.assert_allclose(mh[cover], colors[cover] / 127.5 - 1.0, atol=1e-6)
    assert (mh[~cover] == 0).all() and mh.min() >= -1 and mh.max() <= 1
    orange = np.array([255, 128, 0]) / 127.5 - 1
    np.testing.assert_allclose(mh[13, 20], orange, atol=1e-6)
    m, x = sh.to_tensors()
    assert m.shape == (1, 1, 64, 128) and x.shape == (1, 3, 64, 128)
    assert torch.equal(m[0, 0], torch.from_numpy(sh.mask))


def test_no_strokes_means_none(photo):
    prepared = prepare_input(photo, 64, 192)
    assert build_stroke_hint(prepared, None) is None and build_stroke_hint(prepared, []) is None


def test_raster_strokes_opening_as_the_official_get_mask():
    l_img = np.full((40, 60), 100, np.uint8)
    canvas = np.zeros((40, 60, 4), np.uint8)
    canvas[10:20, 10:30] = (200, 30, 40, 255)  # a painted block ...
    canvas[14, 20, 3] = 0  # ... with a pinhole (alpha 0) inside
    canvas[30, 50] = (10, 220, 10, 255)  # a lone painted pixel
    hint, mask = raster_strokes(Image.fromarray(canvas, "RGBA"), l_img)
    stroke = mask == 0
    # MORPH_OPEN on the 255 = no-stroke image closes the strokes: the pinhole becomes stroke,
    # nothing painted is lost, thin strokes survive
    assert stroke[10:20, 10:30].all() and stroke[30, 50]
    assert stroke.sum() == 10 * 20 + 1
    assert hint[14, 20].tolist() == [200, 30, 40]  # filled with its painted neighbours' colour
    assert hint[30, 50].tolist() == [10, 220, 10]
    assert (hint[~stroke] == 100).all()
    # a canvas of another size is resized (nearest) to the input's
    small = Image.fromarray(canvas, "RGBA").resize((30, 20), Image.NEAREST)
    _, mask2 = raster_strokes(small, l_img)
    assert mask2.shape == (40, 60) and (mask2 == 0)[12:18, 12:28].all()


def test_raster_and_vector_strokes_combine():
    gray = Image.fromarray(np.full((64, 128), 90, np.uint8), "L")
    prepared = prepare_input(gray, 64, 192)
    assert prepared.working_size == (128, 64)  # same as the input: no resampling of the canvas
    canvas = np.zeros((64, 128, 4), np.uint8)
    canvas[5:15, 5:25] = (250, 0, 0, 255)
    vec = [stroke("#00ff00", 6, (60, 40), (100, 40))]
    sh = build_stroke_hint(prepared, vec, Image.fromarray(canvas, "RGBA"))
    _, cover = render_vector_strokes(vec, (128, 64), (128, 64))
    raster = np.zeros((64, 128), bool)
    raster[5:15, 5:25] = True
    assert np.array_equal(sh.stroke, raster | cover)
    assert sh.hint[10, 10].tolist() == [250, 0, 0] and sh.hint[40, 80].tolist() == [0, 255, 0]


# ---------------------------------------------------------------- validation


def test_validate_strokes_normalises():
    out = validate_strokes([{"color": "#FFaa00", "width": 3, "points": ((1, 2), [3.5, 4])}], 10, 10)
    assert out == [{"color": "#ffaa00", "width": 3.0, "points": [(1.0, 2.0), (3.5, 4.0)]}]
    assert validate_strokes([{"color": "#000000", "points": [[0, 0]]}], 10, 10)[0]["width"] == 8.0
    assert validate_strokes([{"color": "#000000", "points": [[10, 10]]}], 10, 10)  # the far corner is inside
    assert parse_color("#0a0B0c") == (10, 11, 12)


@pytest.mark.parametrize(
    "strokes, kw, match",
    [
        ("nope", {}, r"strokes: a list"),
        ([{"color": "red", "points": [[1, 1]]}], {}, r"strokes\[0\]\.color"),
        ([{"color": "#ff0000", "points": [[1, 1]]}, {"color": "#12345", "points": [[1, 1]]}], {}, r"strokes\[1\]\.color"),
        ([{"color": "#ff0000", "width": 0, "points": [[1, 1]]}], {}, r"strokes\[0\]\.width"),
        ([{"color": "#ff0000", "width": float("nan"), "points": [[1, 1]]}], {}, r"strokes\[0\]\.width"),
        ([{"color": "#ff0000", "width": 300, "points": [[1, 1]]}], dict(max_width=256), r"strokes\[0\]\.width.*limit"),
        ([{"color": "#ff0000", "points": []}], {}, r"strokes\[0\]\.points"),
        ([{"color": "#ff0000", "points": [[1, 1], [2, float("inf")]]}], {}, r"strokes\[0\]\.points\[1\]"),
        ([{"color": "#ff0000", "points": [[1, 1], [11, 5]]}], {}, r"strokes\[0\]\.points\[1\].*outside the 10x10"),
        ([{"color": "#ff0000", "points": [[-0.1, 5]]}], {}, r"outside"),
        ([{"color": "#ff0000", "points": [[1, 1]]}] * 3, dict(max_strokes=2), r"3 strokes.*limit of 2"),
        ([{"color": "#ff0000", "points": [[1, 1]] * 5}], dict(max_points=4), r"strokes\[0\]\.points: 5 points"),
        ([{"color": "#ff0000", "points": [[1, 1]], "size": 3}], {}, r"strokes\[0\]: unknown field"),
        ([["#ff0000"]], {}, r"strokes\[0\]: an object"),
    ],
)
def test_validate_strokes_names_index_and_field(strokes, kw, match):
    with pytest.raises(ValueError, match=match):
        validate_strokes(strokes, 10, 10, **kw)


def test_api_side_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "from models.colorization.stroke_spec import validate_strokes\n"
        "from models.colorization.weights_layout import exemplar_weights_missing, deformable_weights_missing\n"
        "import models.colorization\n"
        "assert validate_strokes([{'color': '#ffffff', 'points': [[1, 1]]}], 4, 4)\n"
        "assert exemplar_weights_missing('/nonexistent') == ['controlcolor/image_encoder/config.json', "
        "'controlcolor/image_encoder/model.safetensors']\n"
        "heavy = [m for m in ('torch', 'numpy', 'cv2', 'diffusers', 'transformers', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
