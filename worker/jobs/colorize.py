"""The colorize job: Control Color on one photo, `num_outputs` images in one batch."""
from __future__ import annotations

from typing import TYPE_CHECKING

from worker.errors import InvalidInput

if TYPE_CHECKING:
    from worker.runner import JobContext


def run(ctx: "JobContext") -> dict:
    import torch

    from models.media import encode_image, load_image

    p = ctx.params
    try:
        image = load_image(ctx.read_upload(p["image"], "image"))
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"image: cannot decode the upload ({exc})") from exc
    pipe = ctx.pipeline("colorize")
    ctx.control.report(0.05, "preparing", force=True)
    # CPU generator: the same seed gives the same noise on any device.
    generator = torch.Generator("cpu").manual_seed(int(p["seed"]))
    try:
        out = pipe(image=image, prompt=p.get("prompt") or "", num_inference_steps=p["steps"],
                   num_images=p["num_outputs"], generator=generator,
                   callback_on_step_end=ctx.control.step_callback(p["steps"], "denoising", 0.05, 0.95))
    except ValueError as exc:  # the pipeline's check_inputs: names the argument and the fix
        raise InvalidInput(str(exc)) from exc
    ctx.control.report(0.95, "encoding", force=True)
    images = []
    for i, img in enumerate(out.images):
        data, content_type = encode_image(img, "png")
        key = ctx.write_output(f"output_{i}.png", data, content_type)
        images.append({"key": key, "width": img.width, "height": img.height, "content_type": content_type})
    return {"images": images, "seed": int(p["seed"])}
