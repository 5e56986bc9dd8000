"""The video.generate job: DiTCtrl multi-prompt long video, MP4 + thumbnail (+ CSCV)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from worker.errors import InvalidInput

if TYPE_CHECKING:
    from worker.context import JobContext


def pair_progress(ctx: "JobContext", start: float, end: float):
    """Progress per transformer call (pair x step) with an ETA; a cancel stops within one call."""
    began = time.monotonic()

    def callback(pipe, step_index, pair_index, timestep, info):
        done, total = info["calls_done"], info["total_calls"]
        eta = (time.monotonic() - began) / done * (total - done)
        stage = (f"denoising {step_index + 1}/{info['num_steps']} pair {pair_index + 1}/{info['num_pairs']}"
                 f", ETA {eta:.0f} s")
        ctx.control.report(start + (end - start) * done / total, stage, force=done == total)

    return callback


def run(ctx: "JobContext") -> dict:
    import torch

    from models.video.media import MP4_CONTENT_TYPE, encode_mp4, thumbnail

    p = ctx.params
    pipe = ctx.pipeline("video.generate")
    # the metric's model before any denoising: a job that cannot be scored fails now, not after the video
    scorer = ctx.pipeline("video.cscv") if "cscv" in p.get("metrics", []) else None
    ctx.control.report(0.02, "encoding prompts", force=True)
    generator = torch.Generator("cpu").manual_seed(int(p["seed"]))
    try:
        out = pipe(p["prompts"], segments=p.get("segments"), overlap=p["overlap"],
                   transition_segments=p["transition_segments"], kv_sharing=p["kv_sharing"],
                   num_inference_steps=p["steps"], guidance_scale=p["guidance_scale"], height=p.get("height"),
                   width=p.get("width"), fps=p["fps"], generator=generator,
                   callback_on_pair_end=pair_progress(ctx, 0.02, 0.9))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    ctx.control.report(0.9, "encoding video", force=True)
    frames = out.frames
    video_key = ctx.write_output("video.mp4", encode_mp4(frames, fps=out.fps), MP4_CONTENT_TYPE)
    thumb, thumb_type = thumbnail(frames)
    thumb_key = ctx.write_output("thumbnail.jpg", thumb, thumb_type)
    metrics = {}
    if scorer is not None:
        ctx.control.report(0.95, "scoring CSCV", force=True)
        metrics["cscv"] = float(scorer(frames))
    return {"video": {"key": video_key, "frames": int(frames.shape[0]), "fps": out.fps, "width": out.width,
                      "height": out.height, "content_type": MP4_CONTENT_TYPE},
            "thumbnail_key": thumb_key, "segments": out.segments, "latent_frames": out.latent_frames,
            "seed": int(p["seed"]), "metrics": metrics}


def capabilities(rt) -> dict[str, list[str]]:
    """The CSCV metric needs CLIP ViT-B/32 under the pretrained profile."""
    from models.profiles import missing_weights

    pretrained = rt.profile_for("video.generate") == "pretrained"
    return {"cscv": missing_weights("video.cscv", rt.settings.model_dir) if pretrained else []}
