"""anomaly.fit and anomaly.score: PatchCore (fitted, no training) and Reverse Distillation (trained:
worker/jobs/anomaly_train.py). A fitted model is a tenant resource
`anomaly_model` (id from the job id, so a re-run overwrites) with its artifact files in
object storage; thresholds live on the resource, so PATCH changes them without refitting."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.storage.base import ObjectNotFound
from worker.errors import InvalidInput, ModelsNotReady
from worker.jobs.anomaly_train import REVERSE_DISTILLATION

if TYPE_CHECKING:
    from models.anomaly.loader import AnomalyBackbones, LoadedBackbone
    from worker.context import JobContext

ANOMALY_MODEL = "anomaly_model"
PATCHCORE = "patchcore"  # the `model` of a fit, or REVERSE_DISTILLATION


def _backbone(pick) -> "LoadedBackbone":
    """`pick()` a backbone of the kind's warm `AnomalyBackbones`; a missing weight file is not-ready."""
    from models.profiles import WeightsMissing

    try:
        return pick()
    except WeightsMissing as exc:
        raise ModelsNotReady(str(exc)) from exc


def warmup(backbones: "AnomalyBackbones") -> None:
    """One small forward pass of the default backbone (allocator, kernels)."""
    import torch

    with torch.inference_mode():
        backbones.get().net.extract(torch.zeros(1, 3, 64, 64, device=backbones.device))


BACKBONES = ("wide_resnet50_2", "resnet18", "tiny")  # what the API accepts (service/schemas/anomaly.py)


def capabilities(rt) -> dict[str, list[str]]:
    """Per backbone a fit may ask for: the weight file this worker lacks for it."""
    from models.anomaly.loader import missing

    tiny = rt.profile_for("anomaly.fit") == "tiny"
    return {f"backbone:{a}": [] if tiny else missing(a, rt.settings.model_dir) for a in BACKBONES}


def _decode(ctx: "JobContext", blob: bytes, field: str, size: int | None = None, mask: bool = False):
    """One upload or archive entry -> (the image, its upright size before resizing), within the
    job's decode budget (worker/jobs/inputs.py). Resized to size x size right away when given
    (the network input: PatchCore and Reverse Distillation resize with the same bilinear filter,
    so they see the same pixels, and a training set is never held at full size). `mask`: a bool
    array (nonzero = defect), resized with nearest, as anomalib resizes masks."""
    from worker.jobs.inputs import budget

    if not mask:
        return budget(ctx).decode_sized(blob, field, size=(size, size) if size else None)
    import numpy as np
    from PIL import Image

    from models.anomaly.folder import mask_from_image

    image, source = budget(ctx).decode_sized(blob, field)
    m = Image.fromarray(mask_from_image(image).astype(np.uint8) * 255, "L")
    if size and m.size != (size, size):
        m = m.resize((size, size), Image.NEAREST)
    return np.asarray(m) > 127, source


def _load(ctx: "JobContext", ids: list[str], field: str, size: int | None = None) -> tuple[list, list]:
    """Decode the uploads one at a time (see `_decode`): the images and their sizes before resizing."""
    images, sizes = [], []
    for i, upload_id in enumerate(ids):
        image, source = _decode(ctx, ctx.read_upload(upload_id, f"{field}.{i}"), f"{field}.{i}", size)
        images.append(image)
        sizes.append(source)
        ctx.control.check()
    return images, sizes


@dataclass
class Dataset:
    """What a fit was given: normal images, abnormal ones and their masks (None: no masks at
    all; an entry None: that image has none), at the network size; `sizes`: the normal images'
    sizes before resizing."""

    normal: list
    abnormal: list = field(default_factory=list)
    masks: list | None = None
    sizes: list = field(default_factory=list)


def _load_archive(ctx: "JobContext", upload_id: str, size: int) -> Dataset:
    """A ZIP: flat (every entry a normal image) or labelled (normal/, abnormal/, mask/; see
    models.anomaly.folder.group_folder_entries), inflated and decoded one entry at a time."""
    from models.anomaly.folder import group_folder_entries, is_folder_layout
    from service.archives import ArchiveError, image_entries, iter_images
    from worker.jobs.inputs import budget

    b = budget(ctx)
    data = ctx.read_upload(upload_id, "archive")
    try:
        names = [e.name for e in image_entries(data, b.limits, b.max_job_pixels)]
        layout = group_folder_entries(names) if is_folder_layout(names) else None
        # entry index -> (what it is, its place there)
        role = {i: ("normal", k) for k, i in enumerate(layout.normal if layout else range(len(names)))}
        if layout:
            role.update({i: ("abnormal", k) for k, i in enumerate(layout.abnormal)})
            role.update({i: ("mask", k) for k, i in enumerate(layout.abnormal_masks) if i is not None})
        out: dict[str, dict[int, tuple]] = {"normal": {}, "abnormal": {}, "mask": {}}
        for i, (name, blob) in enumerate(iter_images(data, b.limits, b.max_job_pixels)):
            what, k = role[i]
            out[what][k] = _decode(ctx, blob, f"archive: {name}", size, mask=what == "mask")
            ctx.control.check()
    except ArchiveError as exc:
        raise InvalidInput(f"archive: {exc}") from exc
    except ValueError as exc:  # the folder layout (group_folder_entries)
        raise InvalidInput(str(exc)) from exc
    normal = [out["normal"][k] for k in range(len(out["normal"]))]
    abnormal = [out["abnormal"][k][0] for k in range(len(out["abnormal"]))]
    masks = None
    if out["mask"]:
        masks = [out["mask"][k][0] if k in out["mask"] else None for k in range(len(abnormal))]
    return Dataset([im for im, _ in normal], abnormal, masks, [s for _, s in normal])


def _dataset(ctx: "JobContext", size: int) -> Dataset:
    p = ctx.params
    if p.get("archive"):
        data = _load_archive(ctx, p["archive"], size)
    else:
        normal, sizes = _load(ctx, p["images"], "images", size)
        abnormal, _ = _load(ctx, p.get("abnormal") or [], "abnormal", size)
        masks = None
        if p.get("abnormal_masks"):
            masks = [None if upload_id is None else
                     _decode(ctx, ctx.read_upload(upload_id, f"abnormal_masks.{i}"), f"abnormal_masks.{i}", size, True)[0]
                     for i, upload_id in enumerate(p["abnormal_masks"])]
        data = Dataset(normal, abnormal, masks, sizes)
    if len(set(data.sizes)) > 1:
        raise InvalidInput(f"images: training images must share one size, got {sorted(set(data.sizes))}")
    return data


def _progress(ctx: "JobContext", start: float, end: float):
    stages = {"embedding": (0.0, 0.5), "coreset": (0.5, 0.8), "calibration": (0.8, 0.9), "testing": (0.9, 0.95),
              "scoring": (0.0, 1.0)}

    def progress(stage, done, total):
        lo, hi = stages.get(stage, (0.0, 1.0))
        frac = lo + (hi - lo) * done / max(total, 1)
        ctx.control.report(start + (end - start) * frac, f"{stage} {done}/{total}", force=done == total)

    return progress


def fit(ctx: "JobContext") -> dict:
    p = ctx.params
    # the backbone first: a missing weight file refuses the job before any image is decoded
    backbones = ctx.pipeline("anomaly")
    backbone = _backbone(lambda: backbones.get(p.get("backbone")))
    ctx.model_profile = backbone.profile  # what runs: an explicit `tiny` backbone is tiny under any profile
    ctx.control.report(0.01, "reading images", force=True)
    data = _dataset(ctx, p["image_size"])
    if p.get("model", PATCHCORE) == REVERSE_DISTILLATION:
        from worker.jobs.anomaly_train import train

        def save(kind, model, files, counts, extra, result_extra=None):
            return store_model(ctx, kind, model, files, backbone, counts, extra, result_extra)

        return train(ctx, data, backbone, save)
    return _fit_patchcore(ctx, data, backbone)


def _fit_patchcore(ctx: "JobContext", data: Dataset, backbone: "LoadedBackbone") -> dict:
    """PatchCore on the normal images. With abnormal images the dataset is split as anomalib's
    Folder splits it (the model fits the training split, its thresholds come from the
    validation split, its metrics from the test split); without, every normal image is
    fitted, with the request's optional `validation` images for the thresholds."""
    from models.anomaly import PatchCoreConfig, Validation, fit_patchcore, save_artifact
    from models.anomaly.evaluation import evaluate
    from models.anomaly.folder import folder_splits

    p = ctx.params
    size = p["image_size"]
    config = PatchCoreConfig(backbone=backbone.arch, image_size=size, coreset_ratio=p["coreset_ratio"],
                             seed=int(p["seed"]) % 2**31)
    splits = None
    if data.abnormal and p.get("validation"):
        raise InvalidInput("validation: the archive holds abnormal images, so the validation split is taken from "
                           "them (anomalib's Folder); leave `validation` out")
    if data.abnormal:
        splits = folder_splits(data.normal, data.abnormal, abnormal_masks=data.masks, seed=config.seed)
        train, validation = splits.train, splits.validation.as_validation()
    else:
        train, v = data.normal, p.get("validation") or {}
        validation = Validation(normal=_load(ctx, v.get("normal", []), "validation.normal", size)[0],
                                abnormal=_load(ctx, v.get("abnormal", []), "validation.abnormal", size)[0]) if v else None
    try:
        model = fit_patchcore(train, config, validation, backbone=backbone.net, device=ctx.runner.device,
                              progress=_progress(ctx, 0.05, 0.9))
        test_metrics = evaluate(model, splits.test.images, splits.test.labels, splits.test.masks,
                                progress=_progress(ctx, 0.05, 0.9), seed=config.seed) if splits else None
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    counts = {"train": len(train), "memory_bank": int(model.memory_bank.shape[0]),
              "validation_normal": len(validation.normal) if validation else 0,
              "validation_abnormal": len(validation.abnormal) if validation else 0}
    if splits:
        counts.update(test_normal=splits.test.counts()["normal"], test_abnormal=splits.test.counts()["abnormal"])
    extra = {"coreset_ratio": p["coreset_ratio"], "test_metrics": test_metrics,
             "split": splits.record if splits else None}
    return store_model(ctx, PATCHCORE, model, save_artifact(model), backbone, counts, extra)


def store_model(ctx: "JobContext", kind: str, model, files: dict[str, bytes], backbone: "LoadedBackbone",
                counts: dict, extra: dict, result_extra: dict | None = None) -> dict:
    """The artifact files to `anomaly/{tenant}/{model_id}/`, the resource to the store; the job's result."""
    p, job = ctx.params, ctx.job
    ctx.control.report(0.97, "saving model", force=True)
    model_id = "anm_" + job.id.split("_", 1)[1]
    prefix = f"anomaly/{job.tenant}/{model_id}/"
    ctx.control.check()
    for name, blob in files.items():
        ctx.runner.objects.put(prefix + name, blob, "application/json" if name.endswith(".json") else
                               "application/octet-stream")
    thresholds = model.thresholds.to_dict()
    now = time.time()
    ctx.runner.store.put_resource(ANOMALY_MODEL, model_id, job.tenant, {
        "name": p["name"], "model": kind, "backbone": backbone.arch, "image_size": p["image_size"],
        "thresholds": thresholds, "counts": counts, "prefix": prefix, "files": sorted(files), "job_id": job.id,
        "profile": backbone.profile, "backbone_weights": backbone.weights, "backbone_fingerprint": backbone.fingerprint,
        "seed": int(p["seed"]), "created_at": now, "updated_at": now,
        "stored_bytes": sum(map(len, files.values())), **extra})
    return {"model_id": model_id, "model": kind, "thresholds": thresholds, "counts": counts,
            "test_metrics": extra.get("test_metrics"), **(result_extra or {})}


def _load_model(ctx: "JobContext", doc: dict):
    """A stored model (either kind) with the backbone its artifact records (its weights,
    checked by fingerprint), not this worker's default."""
    from models.anomaly import ArtifactError

    if doc.get("model", PATCHCORE) == REVERSE_DISTILLATION:
        from models.anomaly.reverse_distillation import load_artifact, read_artifact_meta
    else:
        from models.anomaly import load_artifact, read_artifact_meta
    runner = ctx.runner
    backbones = ctx.pipeline("anomaly")  # outside the cache's loader below (the cache lock is not reentrant)

    def load():
        try:
            files = {name: runner.objects.get(doc["prefix"] + name) for name in doc["files"]}
        except ObjectNotFound:  # deleted while this job waited: a fixed message, no object key
            raise InvalidInput(f"model_id: {doc['id']} no longer exists") from None
        try:
            backbone = _backbone(lambda: backbones.for_artifact(read_artifact_meta(files)))
            model = load_artifact(files, backbone=backbone.net, device=runner.device)
        except ArtifactError as exc:
            raise InvalidInput(f"model_id: {doc['id']} cannot be loaded: {exc}") from exc
        model.model_profile = backbone.profile
        return model

    return runner.cache.get(("anomaly.model", doc["id"], doc["created_at"]), load)


def score(ctx: "JobContext") -> dict:
    p = ctx.params
    doc = ctx.runner.store.get_resource(ANOMALY_MODEL, p["model_id"])
    if doc is None or doc["tenant"] != ctx.job.tenant:
        raise InvalidInput(f"model_id: {p['model_id']} no longer exists")
    ctx.runner.store.touch_resource(ANOMALY_MODEL, p["model_id"])  # in use: not an idle artifact
    model = _load_model(ctx, doc)
    ctx.model_profile = model.model_profile
    t = doc["thresholds"]
    model.set_thresholds(image=t["image"], pixel=t["pixel"])  # PATCHed values, no refit
    # One image at a time: decode, score, render, write, drop (maps and renders are at each
    # image's own size, so a job of 64 max-size images never holds more than one of them).
    ids, out = p["images"], []
    for k, upload_id in enumerate(ids):
        ctx.control.report(0.1 + 0.89 * k / len(ids), f"scoring {k + 1}/{len(ids)}", force=k == 0)
        image, _ = _decode(ctx, ctx.read_upload(upload_id, f"images.{k}"), f"images.{k}")
        (item,) = model.score([image])
        files = model.render(image, item, segmentation=True)
        keys = {name.split(".")[0] + "_key": ctx.write_output(f"item_{k}_{name}", blob, "image/png")
                for name, blob in files.items()}
        upload = ctx.store.get_upload(upload_id)  # its file name, shown next to the score
        out.append({"image": upload_id, "filename": upload.filename if upload else None, **item.to_dict(), **keys})
        del image, item, files
    return {"model_id": p["model_id"], "model": doc.get("model", PATCHCORE), "items": out}
