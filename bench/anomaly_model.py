"""Benchmark of the PatchCore model part (models/anomaly), no API: fit time, scoring
images/s, and image / pixel AUROC per defect type on the synthetic texture benchmark
(tests/models/anomaly_data.py: brick, grass, gravel crops with scratches, stains, pasted
foreign patches and holes).

    python bench/anomaly_model.py                          # tiny, resnet18, wide_resnet50_2 (random)
    python bench/anomaly_model.py --backbones tiny --quick

Every backbone here has seeded random weights (the ``tiny`` profile; full-size networks with
the FLOPs of the real ones). Runs on the CPU, and also on CUDA when a GPU is present
(``--devices``). Image AUROC per defect type: normal test images vs. images with that
defect; pixel AUROC: all pixels of those images against the defect masks. Per category a
separate model is fitted (one "product" each); "mean" averages the categories.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "models"))

import torch  # noqa: E402
from anomaly_data import DEFECT_TYPES, TEXTURES, make_benchmark  # noqa: E402

from models.anomaly import PatchCoreConfig, Validation, auroc, fit_patchcore  # noqa: E402


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if mask.shape[::-1] == size:
        return mask
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def evaluate(samples, scores, labels_pred, maps) -> dict:
    """Image AUROC (``img``), pixel AUROC (``px``), F1 of the predicted labels (``f1``), and
    per defect type ``img:<kind>`` / ``px:<kind>`` (the normal test images plus the images with
    that defect). ``samples`` are anomaly_data Samples; ``maps`` one anomaly map per sample (any
    size: the ground-truth masks are resized to it, nearest)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.array([s.label for s in samples])
    pred = np.asarray(labels_pred, dtype=bool)
    tp = int((pred & (labels == 1)).sum())
    out = {"img": auroc(scores, labels), "f1": 2 * tp / max(1, int(pred.sum() + labels.sum()))}
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [_resize_mask(s.mask, m.shape[::-1]) for s, m in zip(samples, maps)]
    out["px"] = auroc(np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks]))
    for kind in DEFECT_TYPES:
        sel = [i for i, s in enumerate(samples) if s.defect in (None, kind)]
        if not any(samples[i].defect == kind for i in sel):
            continue
        out[f"img:{kind}"] = auroc(scores[sel], labels[sel])
        out[f"px:{kind}"] = auroc(np.concatenate([maps[i].ravel() for i in sel]),
                                  np.concatenate([masks[i].ravel() for i in sel]))
    return out


def run(backbone: str, device: str, args) -> dict:
    # untimed warm-up: first-call allocations, kernel selection, lazy imports
    warm = make_benchmark(args.categories[0], crop=args.crop, n_train=2, n_test_normal=0, n_test_per_defect=0)
    fit_patchcore(warm.train, PatchCoreConfig(backbone=backbone, image_size=args.image_size), device=device)
    per_cat = {}
    for cat in args.categories:
        b = make_benchmark(cat, crop=args.crop, n_train=args.train, n_validation=args.validation,
                           n_test_normal=args.test_normal, n_test_per_defect=args.per_defect, seed=args.seed)
        val = Validation(normal=[s.image for s in b.validation if s.defect is None],
                         abnormal=[s.image for s in b.validation if s.defect])
        cfg = PatchCoreConfig(backbone=backbone, image_size=args.image_size, batch_size=args.batch_size,
                              seed=args.seed)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model = fit_patchcore(b.train, cfg, val, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        fit_s = time.perf_counter() - t0

        images = [s.image for s in b.test]
        model.score(images[: args.batch_size])  # warm-up batch
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        items = model.score(images, batch_size=args.batch_size)
        if device == "cuda":
            torch.cuda.synchronize()
        ips = len(images) / (time.perf_counter() - t0)

        row = {"fit_s": fit_s, "ips": ips, "bank": int(model.memory_bank.shape[0]),
               **evaluate(b.test, [it.score for it in items], [it.label for it in items],
                          [it.anomaly_map for it in items])}
        f1 = row["f1"]
        per_cat[cat] = row
        print(f"  {cat:7s} fit {fit_s:6.2f} s  score {ips:7.1f} img/s  bank {row['bank']:6d}  "
              f"image AUROC {row['img']:.3f}  pixel AUROC {row['px']:.3f}  F1@threshold {f1:.3f}", flush=True)
    return per_cat


def report(per_cat: dict) -> None:
    cats = list(per_cat)
    head = "  ".join(f"{c:>13s}" for c in cats)
    print(f"  {'defect':8s}  {head}  {'mean':>13s}    (image AUROC / pixel AUROC)")
    for kind in (*DEFECT_TYPES, "all"):
        ki, kp = (f"img:{kind}", f"px:{kind}") if kind != "all" else ("img", "px")
        cells = [f"{per_cat[c][ki]:.3f} / {per_cat[c][kp]:.3f}" for c in cats]
        mi = np.mean([per_cat[c][ki] for c in cats])
        mp = np.mean([per_cat[c][kp] for c in cats])
        print(f"  {kind:8s}  " + "  ".join(f"{x:>13s}" for x in cells) + f"  {mi:.3f} / {mp:.3f}")
    print(f"  mean fit {np.mean([r['fit_s'] for r in per_cat.values()]):.2f} s, "
          f"mean scoring {np.mean([r['ips'] for r in per_cat.values()]):.1f} img/s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="tiny,resnet18,wide_resnet50_2")
    p.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu (+ cuda if present)")
    p.add_argument("--categories", default=",".join(TEXTURES))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224, help="crop side in texture pixels (resized to image-size)")
    p.add_argument("--train", type=int, default=20)
    p.add_argument("--validation", type=int, default=8, help="normal and as many anomalous validation images")
    p.add_argument("--test-normal", type=int, default=24)
    p.add_argument("--per-defect", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sets (smoke run)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default); 1 gives steadier figures on a busy machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.categories = [c for c in args.categories.split(",") if c]
    if args.quick:
        args.train, args.validation, args.test_normal, args.per_defect = 8, 4, 8, 4
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else args.devices.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    print(f"image_size {args.image_size}, crops {args.crop} px, train {args.train}, validation "
          f"{args.validation}+{args.validation}, test {args.test_normal} normal + {args.per_defect} per defect "
          f"type, coreset_ratio 0.1, num_neighbors 9, seeded random backbone weights")
    for device in devices:
        for backbone in args.backbones.split(","):
            print(f"\n[{backbone} on {device}]", flush=True)
            report(run(backbone, device, args))


if __name__ == "__main__":
    main()
