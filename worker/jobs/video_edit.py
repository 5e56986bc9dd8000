"""The video.edit job: Tune-A-Video. Tune on the clip (or load an earlier tuning), DDIM-invert,
then one edited MP4 (and optional GIF) per prompt.

A tuning is stored as a tenant resource `tuned_video_model` whose id follows from the job id,
so a re-run overwrites it: trained parameters (safetensors), their metadata, and the clip's
VAE latents, which let later edits skip both tuning and the clip upload."""
from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

from worker.errors import InvalidInput

if TYPE_CHECKING:
    from worker.context import JobContext

TUNED_VIDEO_MODEL = "tuned_video_model"


def _gif(frames, fps: int) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def _check_decode_work(info: dict, max_frame_pixels: int) -> None:
    """Reading a clip decodes every source frame: refuse one whose frames x pixels exceed the budget."""
    work = info["frames"] * info["width"] * info["height"]
    if work > max_frame_pixels:
        raise ValueError(f"{info['frames']} frames of {info['width']}x{info['height']} = {work} pixels to decode; "
                         f"the limit is {max_frame_pixels} (VISIONJOBS_MAX_FRAME_PIXELS)")


def _tune(ctx: "JobContext", pipe, generator) -> tuple[dict, object, float]:
    from models.video.tuneavideo.artifact import tensor_to_bytes
    from models.video.tuneavideo.clip import probe, read_clip

    p, job, objects = ctx.params, ctx.job, ctx.runner.objects
    data = ctx.read_upload(p["video"], "video")
    try:
        _check_decode_work(probe(data), ctx.runner.settings.max_frame_pixels)  # demuxed, not decoded
        clip = read_clip(data, p.get("frames") or pipe.config.default_frames,
                         p.get("width") or pipe.config.default_width, p.get("height") or pipe.config.default_height,
                         frame_stride=p.get("frame_stride", 2), start_frame=p.get("start_frame", 0))
    except ValueError as exc:  # VideoDecodeError / VideoLimitError
        raise InvalidInput(f"video: {exc}") from exc
    began = time.monotonic()
    pipe.tune(clip.frames, p["source_prompt"], num_steps=p["tune_steps"], generator=generator,
              callback_on_step_end=ctx.control.step_callback(p["tune_steps"], "tuning", 0.02, 0.6))
    tune_seconds = time.monotonic() - began
    ctx.control.report(0.6, "encoding clip", force=True)
    latents = pipe.encode_video(clip.frames, generator=generator)
    art = pipe.export_tuned(clip=clip.settings, source_prompt=p["source_prompt"], job_id=job.id)
    model_id = "tvm_" + job.id.split("_", 1)[1]
    prefix = f"tuned/{job.tenant}/{model_id}/"
    ctx.control.check()  # a stale attempt must not overwrite the live one's tuning
    parts = {"weights.safetensors": (art.weights, "application/octet-stream"),
             "meta.json": (art.meta_json().encode(), "application/json"),
             "latents.safetensors": (tensor_to_bytes(latents), "application/octet-stream")}
    for name, (data, content_type) in parts.items():
        objects.put(prefix + name, data, content_type)
    record = {"prefix": prefix, "base_model_id": pipe.config.base_model_id, "source_prompt": p["source_prompt"],
              "clip": clip.settings, "job_id": job.id, "tune_steps": p["tune_steps"], "created_at": time.time(),
              "size_bytes": sum(len(data) for data, _ in parts.values())}
    record["stored_bytes"] = record["size_bytes"]  # counts against the artifact quota until deleted
    ctx.runner.store.put_resource(TUNED_VIDEO_MODEL, model_id, job.tenant, record)
    return {**record, "id": model_id}, latents, tune_seconds


def _load_tuned(ctx: "JobContext", pipe):
    from models.video.tuneavideo.artifact import ArtifactMismatch, TunedArtifact, tensor_from_bytes

    record = ctx.runner.store.get_resource(TUNED_VIDEO_MODEL, ctx.params["tuned_model"])
    if record is None or record["tenant"] != ctx.job.tenant:
        raise InvalidInput(f"tuned_model: {ctx.params['tuned_model']} no longer exists")
    ctx.runner.store.touch_resource(TUNED_VIDEO_MODEL, ctx.params["tuned_model"])  # in use: not an idle artifact
    objects, prefix = ctx.runner.objects, record["prefix"]
    try:
        pipe.load_tuned(TunedArtifact.from_parts(objects.get(prefix + "weights.safetensors"),
                                                 objects.get(prefix + "meta.json")))
    except ArtifactMismatch as exc:
        raise InvalidInput(f"tuned_model: {exc}") from exc
    return record, tensor_from_bytes(objects.get(prefix + "latents.safetensors"))


def run(ctx: "JobContext") -> dict:
    import torch

    from models.video.media import MP4_CONTENT_TYPE, encode_mp4

    p = ctx.params
    pipe = ctx.pipeline("video.edit")
    generator = torch.Generator("cpu").manual_seed(int(p["seed"]))
    if p.get("tuned_model"):
        record, latents = _load_tuned(ctx, pipe)
        tuning, tune_seconds = "skipped", 0.0
    else:
        record, latents, tune_seconds = _tune(ctx, pipe, generator)
        tuning = "ran"
    steps, n = p["steps"], len(p["edits"])
    inverted = pipe.invert(latents, num_inference_steps=steps,
                           callback_on_step_end=ctx.control.step_callback(steps, "inverting", 0.62, 0.72))

    def sampling(pipe_, i, t, kw):
        done = kw["prompt_index"] * steps + i + 1
        ctx.control.report(0.72 + 0.23 * done / (n * steps), f"editing {kw['prompt_index'] + 1}/{n}, step {i + 1}/{steps}",
                           force=done == n * steps)
        return kw

    out = pipe.edit(p["edits"], inverted, num_inference_steps=steps, guidance_scale=p["guidance_scale"],
                    generator=generator, callback_on_step_end=sampling)
    ctx.control.report(0.95, "encoding videos", force=True)
    videos = []
    for k, (prompt, frames) in enumerate(zip(p["edits"], out.videos)):
        item = {"prompt": prompt, "key": ctx.write_output(f"edit_{k}.mp4", encode_mp4(frames, fps=p["fps"]), MP4_CONTENT_TYPE),
                "frames": int(frames.shape[0]), "fps": p["fps"], "width": int(frames.shape[2]),
                "height": int(frames.shape[1]), "content_type": MP4_CONTENT_TYPE}
        if p.get("gif"):
            item["gif_key"] = ctx.write_output(f"edit_{k}.gif", _gif(frames, p["fps"]), "image/gif")
        videos.append(item)
    return {"tuned_model_id": record["id"], "tuning": tuning, "tune_seconds": round(tune_seconds, 3),
            "videos": videos, "seed": int(p["seed"])}
