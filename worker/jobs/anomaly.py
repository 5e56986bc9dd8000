"""anomaly.fit and anomaly.score: PatchCore. A fitted model is a tenant resource
`anomaly_model` (id from the job id, so a re-run overwrites) with its artifact files in
object storage; thresholds live on the resource, so PATCH changes them without refitting."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from worker.errors import InvalidInput, ModelsNotReady

if TYPE_CHECKING:
    from models.anomaly.loader import AnomalyBackbones, LoadedBackbone
    from worker.context import JobContext

ANOMALY_MODEL = "anomaly_model"


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


def _load(ctx: "JobContext", ids: list[str], field: str, size: int | None = None) -> tuple[list, list]:
    """Decode the uploads one at a time, resized to size x size right away when given (the
    network input: then one full-size image at most is alive at once); the images and their
    upright sizes before resizing."""
    from worker.jobs.inputs import budget

    images, sizes = [], []
    for i, upload_id in enumerate(ids):
        image, source = budget(ctx).decode_sized(ctx.read_upload(upload_id, f"{field}.{i}"), f"{field}.{i}",
                                                 size=(size, size) if size else None)
        images.append(image)
        sizes.append(source)
        ctx.control.check()
    return images, sizes


def _load_archive(ctx: "JobContext", upload_id: str, size: int) -> tuple[list, list]:
    """The archive's images, inflated and decoded one entry at a time."""
    from service.archives import ArchiveError, iter_images
    from worker.jobs.inputs import budget

    b = budget(ctx)
    images, sizes = [], []
    try:
        for name, blob in iter_images(ctx.read_upload(upload_id, "archive"), b.limits, b.max_job_pixels):
            image, source = b.decode_sized(blob, f"archive: {name}", size=(size, size))
            images.append(image)
            sizes.append(source)
            ctx.control.check()
    except ArchiveError as exc:
        raise InvalidInput(f"archive: {exc}") from exc
    return images, sizes


def _progress(ctx: "JobContext", start: float, end: float):
    stages = {"embedding": (0.0, 0.5), "coreset": (0.5, 0.8), "calibration": (0.8, 0.95), "scoring": (0.0, 1.0)}

    def progress(stage, done, total):
        lo, hi = stages.get(stage, (0.0, 1.0))
        frac = lo + (hi - lo) * done / max(total, 1)
        ctx.control.report(start + (end - start) * frac, f"{stage} {done}/{total}", force=done == total)

    return progress


def fit(ctx: "JobContext") -> dict:
    from models.anomaly import PatchCoreConfig, Validation, fit_patchcore, save_artifact

    p, job = ctx.params, ctx.job
    # the backbone first: a missing weight file refuses the job before any image is decoded
    backbones = ctx.pipeline("anomaly")
    backbone = _backbone(lambda: backbones.get(p.get("backbone")))
    arch = backbone.arch
    ctx.model_profile = backbone.profile  # what runs: an explicit `tiny` backbone is tiny under any profile
    ctx.control.report(0.01, "reading images", force=True)
    # PatchCore sees every image at image_size x image_size (patchcore.images_to_tensor resizes
    # with the same bilinear filter), so each is resized as it is decoded: the same tensors,
    # without a training set of full-size images in memory.
    size = p["image_size"]
    if p.get("archive"):
        images, sizes = _load_archive(ctx, p["archive"], size)
    else:
        images, sizes = _load(ctx, p["images"], "images", size)
    if len(set(sizes)) > 1:
        raise InvalidInput(f"images: training images must share one size, got {sorted(set(sizes))}")
    v = p.get("validation") or {}
    validation = Validation(normal=_load(ctx, v.get("normal", []), "validation.normal", size)[0],
                            abnormal=_load(ctx, v.get("abnormal", []), "validation.abnormal", size)[0]) if v else None
    config = PatchCoreConfig(backbone=arch, image_size=p["image_size"], coreset_ratio=p["coreset_ratio"],
                             seed=int(p["seed"]) % 2**31)
    try:
        model = fit_patchcore(images, config, validation, backbone=backbone.net, device=ctx.runner.device,
                              progress=_progress(ctx, 0.05, 0.9))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    ctx.control.report(0.92, "saving model", force=True)
    model_id = "anm_" + job.id.split("_", 1)[1]
    prefix = f"anomaly/{job.tenant}/{model_id}/"
    ctx.control.check()
    files = save_artifact(model)
    for name, blob in files.items():
        ctx.runner.objects.put(prefix + name, blob, "application/json" if name.endswith(".json") else
                               "application/octet-stream")
    thresholds = model.thresholds.to_dict()
    counts = {"train": len(images), "memory_bank": int(model.memory_bank.shape[0]),
              "validation_normal": len(validation.normal) if validation else 0,
              "validation_abnormal": len(validation.abnormal) if validation else 0}
    now = time.time()
    ctx.runner.store.put_resource(ANOMALY_MODEL, model_id, job.tenant, {
        "name": p["name"], "backbone": arch, "image_size": p["image_size"], "coreset_ratio": p["coreset_ratio"],
        "thresholds": thresholds, "counts": counts, "prefix": prefix, "files": sorted(files), "job_id": job.id,
        "profile": backbone.profile, "backbone_weights": backbone.weights, "backbone_fingerprint": backbone.fingerprint,
        "created_at": now, "updated_at": now})
    return {"model_id": model_id, "thresholds": thresholds, "counts": counts}


def score(ctx: "JobContext") -> dict:
    from models.anomaly import ArtifactError, load_artifact, read_artifact_meta

    p, runner = ctx.params, ctx.runner
    doc = runner.store.get_resource(ANOMALY_MODEL, p["model_id"])
    if doc is None or doc["tenant"] != ctx.job.tenant:
        raise InvalidInput(f"model_id: {p['model_id']} no longer exists")

    backbones = ctx.pipeline("anomaly")  # outside the cache's loader below (the cache lock is not reentrant)

    def load():
        # the backbone the artifact records (its weights, checked by fingerprint), not this worker's default
        files = {name: runner.objects.get(doc["prefix"] + name) for name in doc["files"]}
        try:
            backbone = _backbone(lambda: backbones.for_artifact(read_artifact_meta(files)))
            model = load_artifact(files, backbone=backbone.net, device=runner.device)
        except ArtifactError as exc:
            raise InvalidInput(f"model_id: {p['model_id']} cannot be loaded: {exc}") from exc
        model.model_profile = backbone.profile
        return model

    model = runner.cache.get(("anomaly.model", p["model_id"], doc["created_at"]), load)
    ctx.model_profile = model.model_profile
    t = doc["thresholds"]
    model.set_thresholds(image=t["image"], pixel=t["pixel"])  # PATCHed values, no refit
    # One image at a time: decode, score, render, write, drop (maps and renders are at each
    # image's own size, so a job of 64 max-size images never holds more than one of them).
    from worker.jobs.inputs import budget

    ids, out = p["images"], []
    for k, upload_id in enumerate(ids):
        ctx.control.report(0.1 + 0.89 * k / len(ids), f"scoring {k + 1}/{len(ids)}", force=k == 0)
        image = budget(ctx).decode(ctx.read_upload(upload_id, f"images.{k}"), f"images.{k}")
        (item,) = model.score([image])
        files = model.render(image, item)
        keys = {name.split(".")[0] + "_key": ctx.write_output(f"item_{k}_{name}", blob, "image/png")
                for name, blob in files.items()}
        out.append({"image": upload_id, **item.to_dict(), **keys})
        del image, item, files
    return {"model_id": p["model_id"], "items": out}
