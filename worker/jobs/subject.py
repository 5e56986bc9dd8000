"""subject.generate and subject.tune: new images of one subject from a few of its photos.

    subject.generate  method in_context: BLIP-Diffusion (no tuning: the photos' subject
                      embedding goes into the text encoder's context);
                      method expert: DreamBooth-LoRA on SD 1.5, with a `subject_model` (no
                      tuning: `tuning: skipped`) or tuned in the job first (`tuning: ran`,
                      the tuning kept as a subject model like subject.tune's)
    subject.tune      DreamBooth-LoRA tuning only -> a subject model

A subject model is a tenant resource `subject_model` (id `sbm_` + the job id's hex, so a re-run
overwrites) whose artifact, the LoRA delta (safetensors of the adapter parameters) and its
JSON metadata, lies in object storage under `subject/{tenant}/{id}/`. The expert pipeline is
shared by both kinds in a worker; every job leaves it without an adapter (unload in finally).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from worker.errors import InvalidInput

if TYPE_CHECKING:
    from worker.context import JobContext

SUBJECT_MODEL = "subject_model"
WEIGHTS, META = "weights.safetensors", "meta.json"
CLASS_IMAGE_BATCH = 4


# ----------------------------------------------------------------------------- worker hooks

def warmup_incontext(pipe) -> None:
    from PIL import Image

    pipe("a photo", subject_images=[Image.new("RGB", (64, 64), (128, 128, 128))], subject_class="object",
         num_inference_steps=1, height=64, width=64)


def warmup_expert(pipe) -> None:
    pipe.generate("a photo", num_inference_steps=1, height=64, width=64)


def capabilities(rt) -> dict[str, list[str]]:
    """The DreamBench metrics need CLIP ViT-B/32 and DINO ViT-S/16 under the pretrained profile."""
    from models.profiles import missing_weights

    pretrained = rt.profile_for("subject.generate") == "pretrained"
    return {"metrics": missing_weights("subject.metrics", rt.settings.model_dir) if pretrained else []}


# ----------------------------------------------------------------------------- inputs

def _photos(ctx: "JobContext", ids: list[str]) -> list:
    """The subject photos, each checked against the job's decode budget before it is decoded."""
    from worker.jobs.inputs import budget

    return [budget(ctx).decode(ctx.read_upload(upload_id, f"subject_images.{i}"), f"subject_images.{i}")
            for i, upload_id in enumerate(ids)]


def _generator(seed: int):
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))  # CPU: the same seed draws the same noise on any device


def _model_id(job) -> str:
    return "sbm_" + job.id.split("_", 1)[1]


# ----------------------------------------------------------------------------- tuning

def _tune_progress(ctx: "JobContext", steps: int, n_class: int, class_steps: int, lo: float, hi: float):
    """One callback for both phases of a tuning: class images (when prior preservation must
    generate them), then the tuning steps; cancel is looked for at every step of either."""
    batches = -(-n_class // CLASS_IMAGE_BATCH) if n_class else 0
    class_work = batches * class_steps
    # class-image denoising steps cost about a third of a tuning step each (no backward pass)
    total = class_work / 3 + steps
    mid = lo + (hi - lo) * (class_work / 3) / total if total else lo

    def callback(pipe, i, t, kw):
        if "class_image" in kw:
            start = kw["class_image"]
            done = (start // CLASS_IMAGE_BATCH) * class_steps + i + 1
            ctx.control.report(lo + (mid - lo) * done / class_work,
                               f"class images {min(start + CLASS_IMAGE_BATCH, n_class)}/{n_class}", force=done == class_work)
        else:
            ctx.control.report(mid + (hi - mid) * (i + 1) / steps, f"tuning {i + 1}/{steps}", force=i + 1 == steps)
        return kw

    return callback


def _tune(ctx: "JobContext", pipe, photos: list, subject_class: str, t: dict, seed: int, lo: float, hi: float) -> dict:
    """Tune a fresh adapter on `photos` and store it as this job's subject model; its record."""
    prior = t.get("prior_preservation") or {}
    n_class = int(prior.get("class_images", 0)) if prior.get("enabled") else 0
    class_steps = int(prior.get("class_image_steps", 50))
    ctx.control.report(lo, "encoding subject", force=True)
    try:
        out = pipe.tune(photos, subject_class, identifier=t["identifier"], num_steps=t["steps"],
                        learning_rate=t["learning_rate"], rank=t["rank"], train_text_encoder=t["train_text_encoder"],
                        prior_preservation=bool(n_class), num_class_images=max(n_class, 1),
                        class_image_steps=class_steps, generator=_generator(seed),
                        callback_on_step_end=_tune_progress(ctx, t["steps"], n_class, class_steps, lo, hi))
    except FloatingPointError as exc:
        raise InvalidInput(f"learning_rate: {exc}") from exc
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    job = ctx.job
    model_id = _model_id(job)
    art = pipe.export_lora(job_id=job.id)
    prefix = f"subject/{job.tenant}/{model_id}/"
    ctx.control.check()  # a stale attempt must not overwrite the live one's subject model
    ctx.objects.put(prefix + WEIGHTS, art.weights, "application/octet-stream")
    ctx.objects.put(prefix + META, art.meta_json().encode(), "application/json")
    record = {"prefix": prefix, "subject_class": subject_class, "identifier": t["identifier"],
              "instance_prompt": art.meta.get("instance_prompt"), "base_model": art.base_model,
              "profile": getattr(pipe, "model_profile", None), "training": art.meta.get("training", {}),
              "num_parameters": art.meta["num_parameters"], "size_bytes": len(art.weights),
              "tune_seconds": round(out.seconds, 3), "final_loss": out.losses[-1] if out.losses else None,
              "job_id": job.id, "created_at": time.time(), "stored_bytes": len(art.weights) + len(art.meta_json())}
    ctx.store.put_resource(SUBJECT_MODEL, model_id, job.tenant, record)
    return {**record, "id": model_id}


def _load_subject_model(ctx: "JobContext", pipe, model_id: str) -> dict:
    from models.subject.lora import ArtifactMismatch, LoraArtifact
    from service.storage.base import ObjectNotFound

    record = ctx.store.get_resource(SUBJECT_MODEL, model_id)
    if record is None or record["tenant"] != ctx.job.tenant:
        raise InvalidInput(f"subject_model: {model_id} no longer exists")
    ctx.store.touch_resource(SUBJECT_MODEL, model_id)  # in use: not an idle artifact
    ctx.control.report(0.02, "loading subject model", force=True)
    try:
        artifact = LoraArtifact.from_parts(ctx.objects.get(record["prefix"] + WEIGHTS),
                                           ctx.objects.get(record["prefix"] + META))
    except ObjectNotFound:
        raise InvalidInput(f"subject_model: the files of {model_id} are gone")
    try:
        pipe.load_lora(artifact)
    except ArtifactMismatch as exc:
        raise InvalidInput(f"subject_model: {model_id} does not fit this worker's base model: {exc}") from exc
    return {**record, "id": model_id}


# ----------------------------------------------------------------------------- jobs

def _denoising(ctx: "JobContext", steps: int, lo: float, hi: float):
    return ctx.control.step_callback(steps, "denoising", lo, hi)


def _write_images(ctx: "JobContext", images) -> list[dict]:
    from models.media import encode_image

    ctx.control.report(0.96, "encoding images", force=True)
    out = []
    for i, img in enumerate(images):
        data, content_type = encode_image(img, "png")
        out.append({"key": ctx.write_output(f"output_{i}.png", data, content_type), "width": img.width,
                    "height": img.height, "content_type": content_type})
    return out


def _metrics(ctx: "JobContext", images, photos, prompt: str, subject_class: str) -> dict:
    names = ctx.params.get("metrics") or []
    if not names:
        return {}
    scorer = ctx.pipeline("subject.metrics")
    ctx.control.report(0.92, "scoring " + ", ".join(names), force=True)
    try:
        # CLIP-T against the prompt naming the subject by its class, as DreamBench scores
        return scorer.score(images, photos or None, prompt=f"a {subject_class} {prompt.strip()}", metrics=names)
    except ValueError as exc:
        raise InvalidInput(f"metrics: {exc}") from exc


def generate(ctx: "JobContext") -> dict:
    from models.subject.expert import expert_prompt
    from models.subject.incontext import DEMO_NEGATIVE_PROMPT

    p = ctx.params
    method, n, steps, seed = p["method"], p["num_outputs"], p["steps"], int(p["seed"])
    size = dict(height=p.get("height"), width=p.get("width"))
    if p.get("metrics"):  # the metric models first: a missing weight file refuses the job before any work
        ctx.pipeline("subject.metrics")
    photos = _photos(ctx, p.get("subject_images") or [])
    result: dict = {"method": method, "seed": seed}
    if method == "in_context":
        pipe = ctx.pipeline("subject.in_context")
        ctx.control.report(0.02, "encoding subject", force=True)
        try:
            subject = pipe.encode_subject(photos, p["subject_class"])
            ctx.control.report(0.08, "encoding subject", force=True)
            negative = DEMO_NEGATIVE_PROMPT if p.get("negative_prompt") is None else p["negative_prompt"]
            out = pipe(p["prompt"], subject=subject, subject_class=p["subject_class"], negative_prompt=negative,
                       num_images=n, num_inference_steps=steps, guidance_scale=p["guidance_scale"],
                       generator=_generator(seed), callback_on_step_end=_denoising(ctx, steps, 0.1, 0.9), **size)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        result["tuning"] = "none"  # the method has no tuning
        images = out.images
    else:
        pipe = ctx.pipeline("subject.expert")
        try:
            if p.get("subject_model"):
                record, result["tuning"], lo = _load_subject_model(ctx, pipe, p["subject_model"]), "skipped", 0.05
            else:
                record = _tune(ctx, pipe, photos, p["subject_class"], p["tuning"], seed, 0.02, 0.7)
                result["tuning"], lo = "ran", 0.72
            result["subject_model"] = record["id"]
            try:
                # a fresh generator: the same seed samples the same noise whether the job tuned or not
                out = pipe.generate(expert_prompt(p["prompt"], record["identifier"], record["subject_class"]),
                                    negative_prompt=p.get("negative_prompt") or "", num_images=n,
                                    num_inference_steps=steps, guidance_scale=p["guidance_scale"],
                                    generator=_generator(seed), callback_on_step_end=_denoising(ctx, steps, lo, 0.9),
                                    **size)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc
        finally:
            pipe.unload_lora()  # the warm pipeline carries no subject into the next job
        images = out.images
    metrics = _metrics(ctx, images, photos, p["prompt"], p["subject_class"])
    result["images"] = _write_images(ctx, images)
    if metrics:
        result["metrics"] = metrics
    return result


def tune(ctx: "JobContext") -> dict:
    p = ctx.params
    pipe = ctx.pipeline("subject.expert")
    photos = _photos(ctx, p["subject_images"])
    try:
        record = _tune(ctx, pipe, photos, p["subject_class"], p, int(p["seed"]), 0.02, 0.97)
    finally:
        pipe.unload_lora()
    return {"subject_model": record["id"], "steps": record["training"].get("steps", p["steps"]),
            "tune_seconds": record["tune_seconds"], "final_loss": record["final_loss"],
            "num_parameters": record["num_parameters"], "size_bytes": record["size_bytes"]}
