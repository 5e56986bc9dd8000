"""anomaly.fit with `model: reverse_distillation`: training as a resumable job.

The dataset is split as anomalib's Folder splits it (seeded by the job's seed, recorded on the
model); models.anomaly.reverse_distillation trains on it. What the job shows:

* stage text per step ("epoch 3/50 step 2/4 loss 0.4120") and per epoch (loss, validation
  image AUROC and F1 at the adaptive threshold), progress over the epochs;
* `result.training` while it runs and when it is done: attempt, the epoch it resumed from,
  the per-epoch history (`EpochMetrics`), best epoch, early stop.

Resumable: after every epoch the trainer's checkpoint (student, optimiser, epoch, RNG states,
best score and, when the best epoch is an earlier one, its weights) goes to one fixed key,
`jobs/{job_id}/training/checkpoint.pt`. ObjectStore.put replaces an object atomically (the
local store writes a temp file and renames it; an S3 PUT is all or nothing), so the key always
holds one whole checkpoint: this epoch's, with the best weights inside. An attempt that finds
it (its predecessor's worker was lost) resumes at the next epoch, exactly as if training had
not stopped. The checkpoint is deleted when the job ends, however it ends, except when this
attempt lost the job to another one (that attempt resumes from it). The job's last allowed
attempt keeps its checkpoints in memory instead (no later attempt could resume from them, and
if its worker is lost too the job fails without running any code that could delete them): it
deletes the stored one as soon as it has read it, and a re-run of the handler within that
attempt (after a store outage) resumes from the copy in memory.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from service.storage.base import ObjectNotFound
from service.store.base import StoreUnavailable
from worker.errors import InvalidInput, JobCanceled, JobFailed, OwnershipLost

if TYPE_CHECKING:
    from models.anomaly.loader import LoadedBackbone
    from worker.context import JobContext

log = logging.getLogger("visionjobs.worker")
REVERSE_DISTILLATION = "reverse_distillation"
TRAIN = (0.05, 0.9)  # the share of the job's progress the epochs take; then calibration, testing, saving


def checkpoint_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/training/"


def checkpoint_key(job_id: str) -> str:
    return checkpoint_prefix(job_id) + "checkpoint.pt"


def _metric(value) -> str:
    return "-" if value is None else f"{value:.3f}"


class Training:
    """The callbacks of one attempt's training: progress, history, checkpoints, cancel."""

    def __init__(self, ctx: "JobContext", max_epochs: int, max_checkpoint_bytes: int):
        self.ctx, self.max_checkpoint_bytes = ctx, max_checkpoint_bytes
        self.key = checkpoint_key(ctx.job.id)
        self.last_attempt = ctx.job.attempt >= ctx.job.max_attempts  # see the module docstring
        self.progress, self.stage, self.note = TRAIN[0], "training", ""
        self.doc = {"model": "reverse_distillation", "attempt": ctx.job.attempt, "resumed_from_epoch": None,
                    "max_epochs": max_epochs, "epoch": 0, "monitor": None, "best_epoch": None, "best_value": None,
                    "stopped_early": False, "history": []}

    def _report(self, progress: float, stage: str, *, force: bool = False, training: bool = False) -> None:
        self.progress, self.stage = progress, stage
        self.ctx.control.report(progress, stage + self.note, force=force,
                                result={"training": self.doc} if training else None)

    def _fraction(self, epochs_done: float) -> float:
        return TRAIN[0] + (TRAIN[1] - TRAIN[0]) * min(epochs_done / self.doc["max_epochs"], 1.0)

    def _record(self, history: list[dict]) -> None:
        self.doc["history"] = history
        if history:
            last = history[-1]
            self.doc.update(epoch=last["epoch"], monitor=last["monitor"], best_epoch=last["best_epoch"],
                            best_value=last["best_value"], stopped_early=last["early_stop"])

    # --- trainer callbacks ---
    def on_resume(self, epoch: int, history) -> None:
        self.doc["resumed_from_epoch"] = epoch
        self.note = f" (attempt {self.ctx.job.attempt}, resumed from epoch {epoch})"
        self._record([h.to_dict() for h in history])
        log.info("job %s attempt %d resumes training after epoch %d", self.ctx.job.id, self.ctx.job.attempt, epoch)
        self._report(self._fraction(epoch), f"resumed after epoch {epoch}/{self.doc['max_epochs']}", force=True,
                     training=True)

    def on_step(self, s) -> None:
        self._report(self._fraction(s.epoch - 1 + s.step / s.steps_per_epoch),
                     f"epoch {s.epoch}/{s.max_epochs} step {s.step}/{s.steps_per_epoch} loss {s.loss:.4f}")

    def on_epoch(self, m) -> None:
        self._record([*self.doc["history"], m.to_dict()])
        text = (f"epoch {m.epoch}/{m.max_epochs}: loss {m.train_loss:.4f}, val loss {_metric(m.val_loss)}, "
                f"val AUROC {_metric(m.image_auroc)}, F1 {_metric(m.image_f1)}; best epoch {m.best_epoch}"
                + (", early stop" if m.early_stop else ""))
        self._report(self._fraction(m.epoch), text, force=True, training=True)

    def on_checkpoint(self, data: bytes, epoch: int) -> None:
        if len(data) > self.max_checkpoint_bytes:  # the estimate checked before training is an upper bound
            raise InvalidInput(f"backbone: the training checkpoint takes {len(data)} bytes, above the limit of "
                               f"{self.max_checkpoint_bytes} (VISIONJOBS_MAX_CHECKPOINT_BYTES)")
        if self.last_attempt:
            self.ctx._training_checkpoint = data  # (the JobContext outlives a re-run of the handler)
            return
        self.ctx.control.check()  # a stale attempt must not overwrite the live one's checkpoint
        self.ctx.runner.objects.put(self.key, data, "application/octet-stream")

    def should_cancel(self) -> bool:
        # before every step and validation batch: reads the cancel flag from the store (throttled writes)
        self._report(self.progress, self.stage)
        return False  # a cancel raised JobCanceled in report()

    def final_passes(self, stage: str, done: int, total: int) -> None:
        lo, hi = {"calibration": (0.9, 0.93), "testing": (0.93, 0.96)}.get(stage, (0.9, 0.96))
        self._report(lo + (hi - lo) * done / max(total, 1), f"{stage} {done}/{total}", force=done == total)

    # --- the checkpoint object ---
    def load(self) -> bytes | None:
        data = getattr(self.ctx, "_training_checkpoint", None)
        if data is None:
            try:
                data = self.ctx.runner.objects.get(self.key)
            except ObjectNotFound:
                return None
        if self.last_attempt:
            self.ctx._training_checkpoint = data
            self.drop()
        return data

    def drop(self) -> None:
        """Delete the checkpoint: the job ends (unless another attempt owns it now)."""
        try:
            self.ctx.control.check()
        except OwnershipLost:
            return
        except JobFailed:  # canceled or timed out: this attempt still ends the job
            pass
        try:
            self.ctx.runner.objects.delete_prefix(checkpoint_prefix(self.ctx.job.id))
        except Exception as exc:  # the job's outcome stands; the checkpoint is garbage now
            log.warning("job %s: could not delete its training checkpoint: %s", self.ctx.job.id, exc)


def train(ctx: "JobContext", data, backbone: "LoadedBackbone", save: Callable[..., dict]) -> dict:
    """Train on `data` (worker.jobs.anomaly.Dataset), then `save(kind, model, files, counts, extra, result_extra)` the model (the
    caller's, worker.jobs.anomaly.store_model) and return its result."""
    from models.anomaly.folder import folder_splits
    from models.anomaly.reverse_distillation import (CheckpointError, ReverseDistillationConfig, TrainingCanceled,
                                                     checkpoint_nbytes, save_artifact, train_reverse_distillation)

    p, settings = ctx.params, ctx.settings
    config = ReverseDistillationConfig(backbone=backbone.arch, image_size=p["image_size"], max_epochs=p["max_epochs"],
                                       patience=p["patience"], batch_size=p["batch_size"],
                                       learning_rate=p["learning_rate"], seed=int(p["seed"]) % 2**31)
    try:
        config.validate()
        splits = folder_splits(data.normal, data.abnormal, abnormal_masks=data.masks, seed=config.seed)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    # budgets, on the actual split, before the first step
    work = config.max_epochs * len(splits.train)
    if work > settings.max_train_image_epochs:
        raise InvalidInput(f"max_epochs: {config.max_epochs} epochs x {len(splits.train)} training images = {work}, "
                           f"above the training work limit of {settings.max_train_image_epochs} "
                           "(VISIONJOBS_MAX_TRAIN_IMAGE_EPOCHS)")
    need = checkpoint_nbytes(backbone.net, config)
    if need > settings.max_checkpoint_bytes:
        raise InvalidInput(f"backbone: a {backbone.arch} training checkpoint takes up to {need} bytes, above the "
                           f"limit of {settings.max_checkpoint_bytes} (VISIONJOBS_MAX_CHECKPOINT_BYTES)")

    t = Training(ctx, config.max_epochs, settings.max_checkpoint_bytes)
    ends_job = False
    try:
        resume = t.load()

        def run(resume_from):
            return train_reverse_distillation(
                splits, config, backbone=backbone.net, device=ctx.device, on_step=t.on_step, on_epoch=t.on_epoch,
                on_checkpoint=t.on_checkpoint, should_cancel=t.should_cancel, resume_from=resume_from,
                on_resume=t.on_resume, progress=t.final_passes)

        t._report(TRAIN[0], "training", force=True, training=True)
        try:
            try:
                result = run(resume)
            except CheckpointError as exc:
                if resume is None:
                    raise
                # written by another version of the code, or for other inputs: start over
                log.warning("job %s: the saved checkpoint cannot be resumed (%s); training from epoch 0", ctx.job.id, exc)
                t = Training(ctx, config.max_epochs, settings.max_checkpoint_bytes)
                result = run(None)
        except TrainingCanceled as exc:
            raise JobCanceled("canceled by the client") from exc
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        t._record([h.to_dict() for h in result.history])
        model = result.model
        counts = {"train": len(splits.train), **{f"validation_{k}": v for k, v in splits.validation.counts().items()},
                  **{f"test_{k}": v for k, v in splits.test.counts().items()}}
        training = {**t.doc, "epochs_run": result.epochs_run}
        extra = {"coreset_ratio": None, "test_metrics": model.test_metrics,
                 "validation_metrics": model.info.get("validation_metrics"), "split": splits.record,
                 "training": training,
                 "training_config": {k: getattr(config, k)
                                     for k in ("max_epochs", "patience", "batch_size", "learning_rate", "seed")}}
        out = save(REVERSE_DISTILLATION, model, save_artifact(model), counts, extra, {"training": training})
        ends_job = True
        return out
    except (OwnershipLost, StoreUnavailable):
        raise  # not the end: another attempt (or this one, once the store is back) resumes from the checkpoint
    except Exception:
        ends_job = True  # failed, canceled, timed out: the job ends here
        raise
    finally:  # (a process exiting mid-job, BaseException, keeps it too)
        if ends_job:
            t.drop()
