"""Tune-A-Video timings: tuning seconds/step, DDIM inversion seconds, sampling seconds/video.

    python bench/video_tuneavideo.py                 tiny profile on the CPU (8 frames, 64x64)
    python bench/video_tuneavideo.py --full          + full-size SD-1.5 with random weights on
                                                     CUDA (24 frames, 512x512, fp16 + gradient
                                                     checkpointing as the official config), side
                                                     by side with the tiny run

Random weights have the real architecture's FLOPs and memory; outputs are noise. For scale:
the official README reports 10-15 min for 300-500 tuning steps of 24 frames on an A100.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sd15_random_pipeline(device: str, dtype: torch.dtype):
    """SD 1.5's UNet / VAE / CLIP ViT-L/14 text tower with random weights (built on the
    device), the tiny code-built tokenizer (ids fit the 49408 vocabulary) and SD's DDIM."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from models.colorization import tiny
    from models.video.tuneavideo.pipeline import TuneAVideoPipeline

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
        tokenizer = tiny.tiny_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    cast = (lambda m: m.to(dtype)) if dtype != torch.float32 else (lambda m: m)  # to() on a model warns
    pipe = TuneAVideoPipeline(
        vae=cast(vae).eval(), text_encoder=cast(text_encoder).eval(), tokenizer=tokenizer,
        unet=cast(unet).eval(), scheduler=tiny.tiny_scheduler(), base_model_id="sd15-random",
    )
    return pipe.to(device)


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)


def reset_peak(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(name: str, pipe, device: str, frames: int, size: int, tune_steps: int, steps: int, warmup: int) -> dict:
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    gen = torch.Generator(device="cpu").manual_seed(0)
    fig = dict(name=name, device=device, frames=frames, size=size,
               trainable_m=sum(p.numel() for p in pipe._base_trainable.values()) / 1e6)

    times = []
    cb = lambda p, i, t, kw: (sync(device), times.append(time.perf_counter()))  # noqa: E731
    reset_peak(device)
    start = time.perf_counter()
    out = pipe.tune(video, "a video", num_steps=warmup + tune_steps, generator=gen, callback_on_step_end=cb)
    fig["tune_s_per_step"] = (times[-1] - times[warmup - 1]) / tune_steps if warmup else (times[-1] - start) / tune_steps
    fig["tune_peak_gib"] = peak_gib(device)
    fig["tune_500_steps_min"] = fig["tune_s_per_step"] * 500 / 60
    fig["loss_finite"] = all(np.isfinite(out.losses))
    fig["artifact_mib"] = len(pipe.export_tuned(clip=dict(frames=frames, width=size, height=size)).weights) / 2**20

    latents = pipe.encode_video(video, gen)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    inverted = pipe.invert(latents, num_inference_steps=steps)
    sync(device)
    fig["invert_s"] = time.perf_counter() - t0
    fig["invert_peak_gib"] = peak_gib(device)

    reset_peak(device)
    t0 = time.perf_counter()
    res = pipe.edit(["an edited video"], inverted, num_inference_steps=steps)  # CFG 12.5: 2 x 50 UNet passes
    sync(device)
    fig["sample_s_per_video"] = time.perf_counter() - t0
    fig["sample_peak_gib"] = peak_gib(device)
    assert res.videos[0].shape == (frames, size, size, 3)
    return fig


def measure(full: bool = False, tune_steps: int = 5, steps: int = 50, frames: int | None = None,
            size: int | None = None, threads: int = 1, full_device: str = "cuda") -> list[dict]:
    """The tiny row (CPU), plus the full-size random SD-1.5 row on `full_device` when `full`
    (skipped, with a message, when that is CUDA and none is present)."""
    from models.profiles import load_video_edit

    rows = []
    torch.set_num_threads(threads)
    tiny = load_video_edit("tiny")
    rows.append(run("tiny", tiny, "cpu", frames or 8, size or 64, tune_steps, steps, warmup=1))
    del tiny
    if full:
        dev = full_device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print("--full: no CUDA device here; skipped", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            pipe = sd15_random_pipeline(dev, torch.float16 if dev.startswith("cuda") else torch.float32)
            where = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
            print(f"built full-size random SD-1.5 in {time.perf_counter() - t0:.1f} s ({where})")
            rows.append(run("sd15-random", pipe, dev, frames or 24, size or 512, tune_steps, steps, warmup=2))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also run full-size random SD-1.5 on CUDA")
    ap.add_argument("--tune-steps", type=int, default=5, help="timed tuning steps (after warm-up)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps for inversion and sampling")
    ap.add_argument("--frames", type=int, default=None, help="frames (tiny 8, full 24)")
    ap.add_argument("--size", type=int, default=None, help="side in px (tiny 64, full 512)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for the tiny run")
    ap.add_argument("--full-device", default="cuda", help="device of the full-size run (cpu: a float32 smoke run)")
    args = ap.parse_args(argv)
    rows = measure(args.full, args.tune_steps, args.steps, args.frames, args.size, args.threads, args.full_device)

    keys = ["device", "frames", "size", "trainable_m", "artifact_mib", "tune_s_per_step", "tune_500_steps_min",
            "tune_peak_gib", "loss_finite", "invert_s", "invert_peak_gib", "sample_s_per_video", "sample_peak_gib"]
    print(f"\nTune-A-Video (tuning: batch 1, AdamW; inversion: {args.steps} DDIM steps, no CFG; "
          f"sampling: {args.steps} DDIM steps, CFG 12.5; CPU peak = process max RSS)")
    print(f"{'':22}" + "".join(f"{r['name']:>16}" for r in rows))
    for k in keys:
        vals = [r[k] for r in rows]
        cells = [f"{v:16.3f}" if isinstance(v, float) else f"{v!s:>16}" for v in vals]
        print(f"{k:22}" + "".join(cells))


if __name__ == "__main__":
    main()
