"""Anomaly scoring benchmark through the API (issue 4, items 1 and 4), and PatchCore beside
Reverse Distillation (issue 20).

    python bench/anomaly.py                  # brick, grass, gravel; 20 train, 8+8 validation, 72 test each
    python bench/anomaly.py --quick          # smaller sets
    python bench/anomaly.py --compare-only   # part 3 alone

1. Detection quality through the API. The synthetic benchmark of tests/models/anomaly_data.py
   (scikit-image texture photographs, 224 px crops; test crops carry scratches, stains, pasted
   foreign patches or holes, with ground-truth masks) goes through an embedded ``visionjobs
   run`` subprocess (VISIONJOBS_MODEL_PROFILE=tiny, its own data dir): every image is uploaded
   (POST /v1/uploads), one model per category is fitted (POST /v1/anomaly-models {images,
   validation {normal, abnormal}, backbone "tiny", image_size 256}), the test images are scored
   (POST /v1/anomaly-scores, at most 64 per job), and the ``anomaly_map_url`` 16-bit PNGs are
   downloaded and decoded (models.anomaly.postprocess.decode_anomaly_map_png16: the normalised
   map, value / 65535). Image AUROC: the returned raw ``score`` of normal test images vs images
   with a defect; pixel AUROC: every pixel of the decoded maps vs the defect masks (the map is
   clamped to [0, 1] by the normalisation, so far-out pixels tie; ties count half). Per defect
   type: the normal test images plus the images with that defect. F1: the returned labels.
2. Fit time and scoring images/s at 256 px for the tiny and the full-size wide_resnet50_2
   backbone (seeded random weights: the real FLOPs), on the CPU, and on CUDA when available,
   from bench/anomaly_model.py (the model part, no API): one category, a warm-up fit first.
3. PatchCore and Reverse Distillation side by side on the same folder dataset and split
   (bench/anomaly_compare.py, the model part): fit / train seconds, scoring images/s, image
   and pixel AUROC and F1 on the held-out test split; the tiny backbone on the CPU (one torch
   thread), and wide_resnet50_2 (random weights: the real FLOPs) on CUDA when available.

Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, BenchOptions, cuda_available, print_and_save, row  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "models"))
FINAL = ("succeeded", "failed", "canceled")
MAX_SCORE_IMAGES = 64
BIG = str(10**9)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _seconds(job: dict) -> float | None:
    from datetime import datetime

    if job.get("started_at") and job.get("finished_at"):
        return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
    return None


class EmbeddedService:
    """`visionjobs run` (API + worker in one process, SQLite + local files), tiny profile."""

    def __init__(self, tmp: Path):
        from tests.conftest import free_port
        from tests.integration.procs import VISIONJOBS, Proc, clean_env, wait_http

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = clean_env(VISIONJOBS_MODEL_PROFILE="tiny", VISIONJOBS_RATE_LIMIT_PER_MINUTE=BIG,
                        VISIONJOBS_MAX_ACTIVE_JOBS=BIG)
        self.proc = Proc([*VISIONJOBS, "run", "--port", str(self.port), "--data-dir", str(tmp / "data")], env,
                         tmp / "run.log")
        wait_http(f"{self.base}/readyz", self.proc, timeout=180)

    def close(self) -> None:
        self.proc.stop()


def _wait(client, job_id: str, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] in FINAL:
            return job
    raise TimeoutError(job_id)


def api_category(client, category: str, sizes: dict, image_size: int, seed: int) -> dict:
    """Fit and score one category through the API; the figures and the raw per-image results."""
    from anomaly_data import make_benchmark

    from bench.anomaly_model import evaluate
    from models.anomaly.postprocess import decode_anomaly_map_png16

    b = make_benchmark(category, crop=sizes["crop"], n_train=sizes["train"], n_validation=sizes["validation"],
                       n_test_normal=sizes["test_normal"], n_test_per_defect=sizes["per_defect"], seed=seed)

    def upload(image) -> str:
        r = client.post("/v1/uploads", files={"file": ("x.png", _png(image), "image/png")})
        r.raise_for_status()
        return r.json()["id"]

    t0 = time.perf_counter()
    train = [upload(im) for im in b.train]
    val = {"normal": [upload(s.image) for s in b.validation if s.defect is None],
           "abnormal": [upload(s.image) for s in b.validation if s.defect]}
    test = [upload(s.image) for s in b.test]
    upload_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    r = client.post("/v1/anomaly-models", json={"name": category, "images": train, "validation": val,
                                                "backbone": "tiny", "image_size": image_size, "seed": seed})
    r.raise_for_status()
    fit = _wait(client, r.json()["id"])
    fit_e2e = time.perf_counter() - t0
    if fit["status"] != "succeeded":
        raise RuntimeError(f"fit of {category} {fit['status']}: {fit['error']}")
    model_id = fit["result"]["model_id"]

    items, score_run_s, t0 = [], 0.0, time.perf_counter()
    for i in range(0, len(test), MAX_SCORE_IMAGES):
        r = client.post("/v1/anomaly-scores", json={"model_id": model_id, "images": test[i:i + MAX_SCORE_IMAGES]})
        r.raise_for_status()
        job = _wait(client, r.json()["id"])
        if job["status"] != "succeeded":
            raise RuntimeError(f"scoring of {category} {job['status']}: {job['error']}")
        items += job["result"]["items"]
        score_run_s += _seconds(job) or 0.0
    score_e2e = time.perf_counter() - t0
    maps = []
    for it in items:
        m = client.get(it["anomaly_map_url"])
        m.raise_for_status()
        maps.append(decode_anomaly_map_png16(m.content))
    out = evaluate(b.test, [it["score"] for it in items], [it["label"] for it in items], maps)
    out.update(fit_run_s=_seconds(fit), fit_e2e_s=fit_e2e, score_run_s=score_run_s, score_e2e_s=score_e2e,
               score_ips=len(items) / score_run_s if score_run_s else None, upload_s=upload_s,
               n_train=len(train), n_validation=len(val["normal"]) + len(val["abnormal"]), n_test=len(test),
               thresholds=fit["result"]["thresholds"], counts=fit["result"]["counts"],
               map_size=list(maps[0].shape[::-1]) if maps else None)
    return out


def run_api(categories: list[str], sizes: dict, image_size: int, seed: int) -> dict:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="vj-bench-anomaly-"))
    svc = EmbeddedService(tmp)
    try:
        with httpx.Client(base_url=svc.base, timeout=120) as client:
            return {cat: api_category(client, cat, sizes, image_size, seed) for cat in categories}
    finally:
        svc.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_timing(backbones: list[str], devices: list[str], sizes: dict, image_size: int) -> dict:
    """bench/anomaly_model.run on one category: fit seconds and scoring images/s."""
    from bench.anomaly_model import run

    args = SimpleNamespace(categories=["brick"], crop=224, image_size=image_size, batch_size=8, seed=0, **sizes)
    out = {}
    for device in devices:
        for backbone in backbones:
            print(f"[{backbone} on {device}]", flush=True)
            out[f"{backbone}@{device}"] = run(backbone, device, args)["brick"]
    return out


def report_api(per_cat: dict) -> str:
    from anomaly_data import DEFECT_TYPES

    cats = list(per_cat)
    lines = [f"  {'defect':8s}  " + "  ".join(f"{c:>13s}" for c in cats) + f"  {'mean':>13s}    (image / pixel AUROC)"]
    for kind in (*DEFECT_TYPES, "all"):
        ki, kp = (f"img:{kind}", f"px:{kind}") if kind != "all" else ("img", "px")
        cells = [f"{per_cat[c][ki]:.3f} / {per_cat[c][kp]:.3f}" for c in cats]
        mi = sum(per_cat[c][ki] for c in cats) / len(cats)
        mp = sum(per_cat[c][kp] for c in cats) / len(cats)
        lines.append(f"  {kind:8s}  " + "  ".join(f"{x:>13s}" for x in cells) + f"  {mi:.3f} / {mp:.3f}")
    return "\n".join(lines)


def collect(opts: BenchOptions | None = None, *, categories: list[str] | None = None,
            backbones: list[str] | None = None) -> dict:
    import torch
    from anomaly_data import DEFECT_TYPES, TEXTURES

    opts = opts or BenchOptions()
    categories = categories or list(TEXTURES)
    backbones = backbones or ["tiny", "wide_resnet50_2"]
    image_size = 256
    api_sizes = (dict(crop=224, train=12, validation=8, test_normal=12, per_defect=6) if opts.quick else
                 dict(crop=224, train=20, validation=8, test_normal=24, per_defect=12))
    # timing only (the quality figures come from part 1): the same small set in both modes
    timing_sizes = dict(train=8, validation=4, test_normal=8, per_defect=4)
    devices = ["cpu"] + (["cuda"] if opts.gpu and cuda_available() else [])
    settings = {"image_size": image_size, "api": {"categories": categories, "backbone": "tiny",
                                                  "coreset_ratio": 0.1, "num_neighbors": 9, "seed": 0, **api_sizes,
                                                  "service": "visionjobs run (embedded), tiny profile, 1 torch thread"},
                "timing": {"category": "brick", "backbones": backbones, "devices": devices, "batch_size": 8,
                           "torch_threads": torch.get_num_threads(), **timing_sizes,
                           "weights": "seeded random (full-size FLOPs)"}}
    print(f"API benchmark: {', '.join(categories)} ...", flush=True)
    api = run_api(categories, api_sizes, image_size, seed=0)
    print(report_api(api), flush=True)
    timing = run_timing(backbones, devices, timing_sizes, image_size)

    rows = []
    n = len(api)
    mean = lambda key: sum(api[c][key] for c in api) / n  # noqa: E731
    for kind in (*DEFECT_TYPES, "all"):
        ki, kp = (f"img:{kind}", f"px:{kind}") if kind != "all" else ("img", "px")
        case = f"through the API, tiny backbone, mean of {n} categories"
        note = "goal image AUROC >= 0.90" if kind == "all" else ""
        rows += [row(case, f"image AUROC, {kind}", mean(ki), "", note), row(case, f"pixel AUROC, {kind}", mean(kp))]
    for cat, r in api.items():
        case = f"through the API, tiny backbone, {cat}"
        rows += [row(case, "image AUROC", r["img"], "", f"{r['n_test']} test images"),
                 row(case, "pixel AUROC", r["px"]),
                 row(case, "F1 of returned labels", r["f1"], "", f"threshold: {r['thresholds'].get('image_method')}"),
                 row(case, "fit job run time", r["fit_run_s"], "s",
                     f"{r['n_train']} train + {r['n_validation']} validation images"),
                 row(case, "scoring job images/s", r["score_ips"], "img/s", "incl. heat map, mask, 16-bit map PNGs")]
    for key, r in timing.items():
        backbone, device = key.split("@")
        case = f"model only, {backbone}, {device}, {image_size} px"
        rows += [row(case, "fit", r["fit_s"], "s", f"{timing_sizes['train'] + 2 * timing_sizes['validation']} images "
                                                   f"(train + validation), memory bank {r['bank']}"),
                 row(case, "scoring", r["ips"], "img/s", "batch 8")]
    compare = run_compare(opts, backbones)
    rows += compare_rows(compare)
    settings["compare"] = compare["settings"]
    return {"settings": settings, "rows": rows, "details": {"api": api, "timing": timing, "compare": compare["results"]}}


def run_compare(opts: BenchOptions, backbones: list[str]) -> dict:
    """Part 3: bench/anomaly_compare.run with this run's sizes; one torch thread on the CPU."""
    import torch

    from bench.anomaly_compare import run

    sizes = (dict(crop=224, train=12, test_normal=6, per_defect=2) if opts.quick else
             dict(crop=224, train=24, test_normal=12, per_defect=4))
    epochs, patience, image_size, batch_size = (10 if opts.quick else 30), 5, 256, 8
    devices = ["cpu"] + (["cuda"] if opts.gpu and cuda_available() else [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        print("PatchCore vs Reverse Distillation (model only) ...", flush=True)
        results = run(backbones, devices, ["brick"], sizes, image_size, batch_size, epochs, patience)
    finally:
        torch.set_num_threads(threads)
    return {"settings": {"category": "brick", "image_size": image_size, "batch_size": batch_size,
                         "rd_max_epochs": epochs, "rd_patience": patience, "devices": devices, "torch_threads_cpu": 1,
                         "weights": "seeded random", **sizes},
            "results": results}


def compare_rows(compare: dict) -> list[dict]:
    rows = []
    for key, res in compare["results"].items():
        backbone, rest = key.split("@")
        device, category = rest.split(":")
        case = f"PatchCore vs Reverse Distillation, {backbone}, {device}, {category}"
        for name, label in (("patchcore", "PatchCore"), ("reverse_distillation", "RD")):
            r = res[name]
            rows += [row(case, f"{label} fit/train", r["fit_s"], "s", r["note"]),
                     row(case, f"{label} scoring", r["ips"], "img/s", "batch 8, maps + masks + boxes"),
                     row(case, f"{label} image AUROC", r["image_auroc"], "", f"test split {res['split']['test']}"),
                     row(case, f"{label} pixel AUROC", r["pixel_auroc"]),
                     row(case, f"{label} F1 at threshold", r["image_f1"])]
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--categories", default=None, help="comma list (default brick,grass,gravel)")
    ap.add_argument("--backbones", default=None, help="timing backbones (default tiny,wide_resnet50_2)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the CUDA timing even when a GPU is present")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/anomaly[_quick].json)")
    ap.add_argument("--compare-only", action="store_true",
                    help="only part 3: PatchCore vs Reverse Distillation (model only)")
    args = ap.parse_args(argv)
    if args.compare_only:
        opts = BenchOptions(quick=args.quick, gpu=not args.no_gpu)
        compare = run_compare(opts, args.backbones.split(",") if args.backbones else ["tiny", "wide_resnet50_2"])
        res = {"settings": {"compare": compare["settings"]}, "rows": compare_rows(compare),
               "details": {"compare": compare["results"]}}
        return print_and_save("anomaly", res, args.out, f"anomaly_compare{'_quick' if args.quick else ''}")
    res = collect(BenchOptions(quick=args.quick, gpu=not args.no_gpu),
                  categories=args.categories.split(",") if args.categories else None,
                  backbones=args.backbones.split(",") if args.backbones else None)
    return print_and_save("anomaly", res, args.out, f"anomaly{'_quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
