"""Small helpers shared by the benchmarks and the harness (bench/run.py).

A benchmark module exposes ``collect(opts: BenchOptions) -> dict`` returning
``{"settings": {...}, "rows": [row(...), ...], "details": {...}}``: ``rows`` are the figures
the harness prints in its one table, ``details`` anything else worth keeping in the JSON.
Figures are printed, never asserted.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the benchmark database of the local Redis (tests use 11); every benchmark that uses it cleans it
BENCH_REDIS_URL = f"redis://127.0.0.1:{os.environ.get('VISIONJOBS_TEST_REDIS_PORT', '6379')}/12"


@dataclass
class BenchOptions:
    quick: bool = False  # smaller sets and fewer repeats; the same settings per job
    gpu: bool = True     # also run the GPU paths (full-size architectures) when CUDA is available

    def to_dict(self) -> dict:
        return asdict(self)


def row(case: str, metric: str, value, unit: str = "", note: str = "") -> dict:
    """One figure of the harness table."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return {"case": case, "metric": metric, "value": value, "unit": unit, "note": note}


def percentile(values, q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    k = (len(vals) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def summary(values) -> dict:
    vals = [float(v) for v in values if v is not None]
    return {"n": len(vals), "p50": percentile(vals, 50), "p95": percentile(vals, 95), "p99": percentile(vals, 99),
            "min": min(vals) if vals else None, "max": max(vals) if vals else None,
            "mean": sum(vals) / len(vals) if vals else None}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def fmt_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:#.4g}"  # 4 significant digits, trailing zeros kept (1.000, 0.9830, 41.52)
    return str(value)


def format_table(rows_by_bench: dict[str, list[dict]]) -> str:
    """One plain-text table: benchmark | case | figure | value | unit | note (a benchmark or case
    name is printed where it changes)."""
    head = ("benchmark", "case", "figure", "value", "unit", "note")
    lines: list[tuple[str, ...]] = []
    for bench, rows in rows_by_bench.items():
        last_case = None
        for i, r in enumerate(rows):
            case = r.get("case", "")
            lines.append((bench if i == 0 else "", case if case != last_case else "", r.get("metric", ""),
                          fmt_value(r.get("value")), r.get("unit", ""), r.get("note", "")))
            last_case = case
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(head)]
    widths[-1] = 0

    def fmt(cols):
        cells = [c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))]
        return "  ".join(cells).rstrip()

    out = [fmt(head), "  ".join("-" * max(w, 4) for w in widths).rstrip()]
    prev_bench = None
    for line in lines:
        if line[0] and prev_bench is not None:
            out.append("")
        if line[0]:
            prev_bench = line[0]
        out.append(fmt(line))
    return "\n".join(out)


def print_and_save(name: str, res: dict, out: str | None, default_stem: str) -> dict:
    """The standalone entry points' ending: the table, then the JSON under bench/results/."""
    import json
    from pathlib import Path

    print(format_table({name: res["rows"]}))
    path = Path(out) if out else RESULTS / f"{default_stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {path}")
    return res
