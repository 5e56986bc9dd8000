"""Vector stroke format and its validation. Standard library only: the API process imports
this (it must never import torch, numpy or OpenCV), the worker and the pipeline too.

A stroke is `{"color": "#RRGGBB", "width": w, "points": [[x, y], ...]}` in input-image pixel
coordinates. Coordinates are continuous image-plane coordinates, the canvas/SVG/PIL
convention: pixel (i, j) covers [i, i+1) x [j, j+1), its centre is (i + 0.5, j + 0.5), and
the image spans [0, width] x [0, height]. `width` is the brush diameter in input pixels. One
point is a dot; more points are a polyline with round caps and round joins.
"""

from __future__ import annotations

import math
import re
from typing import Any

_HEX = re.compile(r"^#[0-9A-Fa-f]{6}$")


def parse_color(color: Any) -> tuple[int, int, int]:
    """'#RRGGBB' (either case) -> (r, g, b) ints. ValueError for anything else."""
    if not isinstance(color, str) or not _HEX.match(color):
        raise ValueError(f"a colour is written '#RRGGBB' (6 hex digits), got {color!r}")
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_strokes(strokes: Any, width: int, height: int, max_strokes: int | None = None,
                     max_points: int | None = None, max_width: float | None = None,
                     check_bounds: bool = True) -> list[dict]:
    """Check vector strokes against an image of `width` x `height` pixels and return them
    normalised (`{"color": "#rrggbb", "width": float, "points": [(x, y), ...]}`).

    Raises ValueError naming the offending stroke index and field, e.g.
    `strokes[3].points[17]: (812.0, 40.0) lies outside the 800x600 image`. `max_points` is per
    stroke. Accepts lists or tuples for points (pydantic dumps tuples). `check_bounds=False`
    checks only the format (the pipeline renders points outside the image clipped)."""
    if not isinstance(strokes, (list, tuple)):
        raise ValueError(f"strokes: a list of strokes is expected, got {type(strokes).__name__}")
    if max_strokes is not None and len(strokes) > max_strokes:
        raise ValueError(f"strokes: {len(strokes)} strokes, above the limit of {max_strokes}")
    out = []
    for i, s in enumerate(strokes):
        where = f"strokes[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{where}: an object {{color, width, points}} is expected, got {type(s).__name__}")
        unknown = set(s) - {"color", "width", "points"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        if "color" not in s:
            raise ValueError(f"{where}.color: missing")
        try:
            r, g, b = parse_color(s["color"])
        except ValueError as exc:
            raise ValueError(f"{where}.color: {exc}") from None
        w = s.get("width", 8.0)
        if not _number(w) or w <= 0:
            raise ValueError(f"{where}.width: a finite number > 0 is expected, got {w!r}")
        if max_width is not None and w > max_width:
            raise ValueError(f"{where}.width: {w:g} is above the limit of {max_width:g}")
        pts = s.get("points")
        if not isinstance(pts, (list, tuple)) or not pts:
            raise ValueError(f"{where}.points: a non-empty list of [x, y] is expected")
        if max_points is not None and len(pts) > max_points:
            raise ValueError(f"{where}.points: {len(pts)} points, above the limit of {max_points}")
        norm = []
        for j, p in enumerate(pts):
            if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(_number(v) for v in p):
                raise ValueError(f"{where}.points[{j}]: [x, y] with two finite numbers is expected, got {p!r}")
            x, y = float(p[0]), float(p[1])
            if check_bounds and not (0.0 <= x <= width and 0.0 <= y <= height):
                raise ValueError(f"{where}.points[{j}]: ({x:g}, {y:g}) lies outside the {width}x{height} image "
                                 f"(x in [0, {width}], y in [0, {height}])")
            norm.append((x, y))
        out.append({"color": f"#{r:02x}{g:02x}{b:02x}", "width": float(w), "points": norm})
    return out
