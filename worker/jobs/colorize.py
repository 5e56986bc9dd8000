"""The colorize job: Control Color on one photo (prompt, strokes, exemplar combinable),
`num_outputs` images in one batch."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from worker.errors import InvalidInput

if TYPE_CHECKING:
    from worker.runner import JobContext

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def _image(ctx: "JobContext", field: str, *, rgba: bool = False):
    from PIL import Image, ImageOps

    from models.media import load_image

    data = ctx.read_upload(ctx.params[field], field)
    try:
        if rgba:  # stroke images keep their alpha: it marks the stroke pixels
            return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA")
        return load_image(data)
    except Exception as exc:
        raise InvalidInput(f"{field}: cannot decode the upload ({exc})") from exc


def run(ctx: "JobContext") -> dict:
    import torch

    from models.media import encode_image

    p = ctx.params
    image = _image(ctx, "image")
    stroke_image = _image(ctx, "stroke_image", rgba=True) if p.get("stroke_image") else None
    exemplar = _image(ctx, "exemplar") if p.get("exemplar") else None
    pipe = ctx.pipeline("colorize")
    ctx.control.report(0.05, "preparing", force=True)
    # CPU generator: the same seed gives the same noise on any device.
    generator = torch.Generator("cpu").manual_seed(int(p["seed"]))
    try:
        out = pipe(image=image, prompt=p.get("prompt") or "", negative_prompt=p.get("negative_prompt"),
                   num_inference_steps=p["steps"], guidance=p.get("guidance"), num_images=p["num_outputs"],
                   generator=generator, strokes=p.get("strokes") or None, stroke_image=stroke_image,
                   exemplar=exemplar, sag_scale=p.get("sag_scale", 0.05), sag_threshold=p.get("sag_threshold", 600),
                   deformable_decoder=p.get("deformable_decoder", False),
                   callback_on_step_end=ctx.control.step_callback(p["steps"], "denoising", 0.05, 0.95))
    except ValueError as exc:  # the pipeline's check_inputs: names the argument and the fix
        raise InvalidInput(str(exc)) from exc
    ctx.control.report(0.95, "encoding", force=True)
    fmt = p.get("output_format", "png")
    images = []
    for i, img in enumerate(out.images):
        data, content_type = encode_image(img, fmt)
        key = ctx.write_output(f"output_{i}.{EXTENSIONS[fmt]}", data, content_type)
        images.append({"key": key, "width": img.width, "height": img.height, "content_type": content_type})
    return {"images": images, "seed": int(p["seed"])}
