"""PatchCore and Reverse Distillation side by side on the same data (the model part, no API).

    python bench/anomaly_compare.py                  # tiny on the CPU (+ wide_resnet50_2 on CUDA)
    python bench/anomaly_compare.py --quick

One folder dataset per category, built from the synthetic texture benchmark of
tests/models/anomaly_data.py: normal/ = training crops, abnormal/ = defective crops (with
masks), plus normal test crops; split as anomalib's Folder does (models/anomaly/folder.py:
validation = half of each label of the test set). Both models see the same training images
and the same validation split (PatchCore: thresholds; Reverse Distillation: per-epoch image
AUROC for the best checkpoint and early stopping, then thresholds), and are measured on the
same held-out test split: fit / train seconds (RD: all epochs, validation, calibration and
the test pass), scoring images/s (``model.score``: maps, masks and boxes included, after a
warm-up batch), image AUROC, pixel AUROC, and F1 at each model's calibrated threshold.

Backbones have seeded random weights (the ``tiny`` profile; ``wide_resnet50_2`` gives the
real FLOPs and memory on a GPU). A random teacher is not an ImageNet teacher: the quality
figures compare the code paths, not the published methods (see the README for those).
Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "models"))


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def dataset(category: str, sizes: dict, seed: int):
    from anomaly_data import make_benchmark

    from models.anomaly.folder import folder_splits

    b = make_benchmark(category, crop=sizes["crop"], n_train=sizes["train"], n_test_normal=sizes["test_normal"],
                       n_test_per_defect=sizes["per_defect"], seed=seed)
    abnormal = [s for s in b.test if s.defect]
    return folder_splits(b.train, [s.image for s in abnormal], abnormal_masks=[s.mask for s in abnormal],
                         normal_test=[s.image for s in b.test if not s.defect], seed=seed)


def _throughput(model, images, batch_size: int, device: str) -> float:
    model.score(images[:batch_size], batch_size=batch_size)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    model.score(images, batch_size=batch_size)
    _sync(device)
    return len(images) / (time.perf_counter() - t0)


def compare(backbone: str, device: str, splits, image_size: int, batch_size: int, epochs: int,
            patience: int, seed: int = 0) -> dict:
    """Both models on one split: {"patchcore": {...}, "reverse_distillation": {...}}."""
    from models.anomaly import PatchCoreConfig, fit_patchcore
    from models.anomaly.backbone import build_backbone
    from models.anomaly.evaluation import evaluate
    from models.anomaly.reverse_distillation import ReverseDistillationConfig, train_reverse_distillation

    teacher = build_backbone(backbone, seed=seed, device=device)  # one shared backbone, as the worker's cache
    test = splits.test
    out = {}

    _sync(device)
    t0 = time.perf_counter()
    pc = fit_patchcore(splits.train, PatchCoreConfig(backbone=backbone, image_size=image_size, batch_size=batch_size,
                                                     seed=seed),
                       splits.validation.as_validation(), backbone=teacher, device=device)
    _sync(device)
    out["patchcore"] = {"fit_s": time.perf_counter() - t0,
                        **evaluate(pc, test.images, test.labels, test.masks),
                        "ips": _throughput(pc, test.images, batch_size, device),
                        "note": f"memory bank {int(pc.memory_bank.shape[0])}"}

    cfg = ReverseDistillationConfig(backbone=backbone, image_size=image_size, batch_size=batch_size,
                                    max_epochs=epochs, patience=patience, seed=seed)
    _sync(device)
    t0 = time.perf_counter()
    result = train_reverse_distillation(splits, cfg, backbone=teacher, device=device)
    _sync(device)
    rd = result.model
    out["reverse_distillation"] = {"fit_s": time.perf_counter() - t0, **rd.test_metrics,
                                   "ips": _throughput(rd, test.images, batch_size, device),
                                   "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                                   "note": f"{result.epochs_run} epochs (best {result.best_epoch}"
                                           f"{', stopped early' if result.stopped_early else ''})"}
    return out


def report(title: str, res: dict) -> str:
    pc, rd = res["patchcore"], res["reverse_distillation"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"[{title}]", f"  {'':22s}{'PatchCore':>14s}{'Reverse Distillation':>24s}"]
    for label, key, f in (("fit / train s", "fit_s", ".2f"), ("scoring images/s", "ips", ".1f"),
                          ("image AUROC", "image_auroc", ".3f"), ("pixel AUROC", "pixel_auroc", ".3f"),
                          ("F1 at threshold", "image_f1", ".3f")):
        lines.append(f"  {label:22s}{fmt(pc[key], f):>14s}{fmt(rd[key], f):>24s}")
    lines.append(f"  {'':22s}{pc['note']:>14s}   {rd['note']}")
    return "\n".join(lines)


def run(backbones: list[str], devices: list[str], categories: list[str], sizes: dict, image_size: int,
        batch_size: int, epochs: int, patience: int, seed: int = 0) -> dict:
    out = {}
    for device in devices:
        for backbone in backbones:
            if backbone == "wide_resnet50_2" and device != "cuda":
                continue  # the full-size teacher trains on a GPU only (hours on 2 CPU cores)
            for category in categories:
                splits = dataset(category, sizes, seed)
                res = compare(backbone, device, splits, image_size, batch_size, epochs, patience, seed)
                res["split"] = splits.record["counts"]
                key = f"{backbone}@{device}:{category}"
                out[key] = res
                print(report(f"{backbone} on {device}, {category}, {image_size} px, split {res['split']}", res),
                      flush=True)
    return out


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backbones", default="tiny,wide_resnet50_2")
    ap.add_argument("--categories", default="brick")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: steadier for tiny models on a shared CPU; 0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = dict(crop=224, train=8, test_normal=4, per_defect=1) if args.quick else \
        dict(crop=224, train=24, test_normal=12, per_defect=4)
    return run(args.backbones.split(","), devices, args.categories.split(","), sizes, 128 if args.quick else 256,
               8, args.epochs or (3 if args.quick else 30), 5)


if __name__ == "__main__":
    main()
