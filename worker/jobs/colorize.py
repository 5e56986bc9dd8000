"""The colorize job: Control Color on one photo (prompt, strokes, exemplar combinable),
`num_outputs` images in one batch; with dynamic batching several jobs share one denoising batch
(`run_batch`), each keeping its own seed, progress, cancel and outputs."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from worker.errors import InvalidInput, JobFailed

if TYPE_CHECKING:
    from worker.context import JobContext

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class _AllStopped(Exception):
    """Every job of the batch was canceled or lost: stop denoising."""


def _image(ctx: "JobContext", field: str, *, rgba: bool = False):
    from PIL import Image, ImageOps

    from worker.jobs.inputs import budget

    data = ctx.read_upload(ctx.params[field], field)
    if not rgba:
        return budget(ctx).decode(data, field)
    budget(ctx).check(data, field)
    try:  # stroke images keep their alpha: it marks the stroke pixels
        return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA")
    except Exception as exc:
        raise InvalidInput(f"{field}: cannot decode the upload ({exc})") from exc


def shared_settings(params: dict) -> dict:
    """The per-step settings every job of one batch must share (see the pipeline's batch_key)."""
    return dict(num_inference_steps=params["steps"], guidance=params.get("guidance"),
                sag_scale=params.get("sag_scale", 0.05), sag_threshold=params.get("sag_threshold", 600),
                deformable_decoder=params.get("deformable_decoder", False), parity=params.get("parity"))


def _request(ctx: "JobContext") -> dict:
    import torch

    p = ctx.params
    return dict(image=_image(ctx, "image"), prompt=p.get("prompt") or "", negative_prompt=p.get("negative_prompt"),
                num_images=p["num_outputs"], strokes=p.get("strokes") or None,
                stroke_image=_image(ctx, "stroke_image", rgba=True) if p.get("stroke_image") else None,
                exemplar=_image(ctx, "exemplar") if p.get("exemplar") else None,
                auto_caption=p.get("auto_caption"),  # absent (older jobs): caption when a captioner is loaded
                # CPU generator: the same seed gives the same noise on any device.
                generator=torch.Generator("cpu").manual_seed(int(p["seed"])))


def _write(ctx: "JobContext", out) -> dict:
    from models.media import encode_image

    ctx.control.report(0.95, "encoding", force=True)
    fmt = ctx.params.get("output_format", "png")
    images = []
    for i, img in enumerate(out.images):
        data, content_type = encode_image(img, fmt)
        key = ctx.write_output(f"output_{i}.{EXTENSIONS[fmt]}", data, content_type)
        images.append({"key": key, "width": img.width, "height": img.height, "content_type": content_type})
    return {"images": images, "seed": int(ctx.params["seed"]), "caption": out.caption, "prompt": out.prompt,
            "denoising_steps": out.denoising_steps, "precision": out.precision}


def run_batch(ctxs: list["JobContext"]) -> list[dict | BaseException]:
    """Run compatible colorize jobs as one denoising batch; one outcome per job: its result, or
    the exception that ended it (a cancel ends only that job; the others continue)."""
    outcomes: list[dict | BaseException | None] = [None] * len(ctxs)
    loaded, requests = [], []
    for i, ctx in enumerate(ctxs):
        try:
            requests.append(_request(ctx))
            loaded.append(i)
        except Exception as exc:
            outcomes[i] = exc
    alive = list(loaded)
    if not alive:
        return outcomes
    settings = shared_settings(ctxs[alive[0]].params)
    steps = settings["num_inference_steps"]  # the DDIM steps that run: see pipe.timesteps_for below

    def callback(pipe, step_index, timestep, callback_kwargs):
        done = step_index + 1
        for i in list(alive):
            try:
                ctxs[i].control.report(0.05 + 0.9 * done / steps, f"denoising {done}/{steps}", force=done == steps)
            except JobFailed as exc:  # canceled, timed out or re-queued: that job leaves the batch
                outcomes[i] = exc
                alive.remove(i)
        if not alive:
            raise _AllStopped()
        return callback_kwargs

    try:
        pipe = ctxs[alive[0]].pipeline("colorize")
        steps = len(pipe.timesteps_for(steps, settings["parity"]))  # parity timesteps "uniform": 30 -> 31
        for i in alive:
            ctxs[i].control.report(0.05, "preparing" if len(ctxs) == 1 else f"preparing (batch of {len(ctxs)})",
                                   force=True)
        outs = pipe.run_batch(requests, callback_on_step_end=callback, **settings)
    except _AllStopped:
        return outcomes
    except ValueError as exc:  # the pipeline's check_inputs: names the argument and the fix
        outs, error = None, InvalidInput(str(exc))
    except Exception as exc:
        outs, error = None, exc
    for i, out in zip(loaded, outs or [None] * len(loaded)):
        if i not in alive:
            continue
        if outs is None:
            outcomes[i] = error
            continue
        try:
            outcomes[i] = _write(ctxs[i], out)
        except Exception as exc:
            outcomes[i] = exc
    return outcomes


def run(ctx: "JobContext") -> dict:
    outcome = run_batch([ctx])[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def batch_key(rt, job) -> tuple | None:
    """Jobs with equal keys can share a batch; None: this job is not batchable."""
    upload = rt.store.get_upload(job.params["image"])
    if upload is None or not upload.width:
        return None
    pipe = rt.pipeline("colorize", "colorize")
    s = shared_settings(job.params)
    return pipe.batch_key(upload.width, upload.height, steps=s["num_inference_steps"], guidance=s["guidance"],
                          sag_scale=s["sag_scale"], sag_threshold=s["sag_threshold"],
                          deformable_decoder=s["deformable_decoder"], exemplar=bool(job.params.get("exemplar")),
                          parity=s["parity"])


def warmup(pipe) -> None:
    from PIL import Image

    pipe(image=Image.new("RGB", (64, 64), (128, 128, 128)), num_inference_steps=1, sag_scale=0.05, sag_threshold=0)


def capabilities(rt) -> dict[str, list[str]]:
    """Optional Control Color features and, when absent, the files that would enable them."""
    if rt.profile_for("colorize") != "pretrained":
        return {"exemplar": [], "deformable_decoder": [], "autoguidance": []}
    from models.colorization import weights_layout as layout

    model_dir, guide = rt.settings.model_dir, rt.settings.autoguidance_dir
    return {"exemplar": layout.exemplar_weights_missing(model_dir),
            "deformable_decoder": layout.deformable_weights_missing(model_dir),
            "autoguidance": layout.guide_weights_missing(guide, model_dir) if guide
            else ["VISIONJOBS_AUTOGUIDANCE_DIR (unset)"]}
