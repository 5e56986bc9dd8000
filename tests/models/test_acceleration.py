"""GPU fast paths, exercised on CPU with `force`: same outputs, the formats really applied."""
from __future__ import annotations

import torch

from models.acceleration import accelerate
from models.profiles import load
from tests.helpers import photo


def test_noop_on_cpu_by_default():
    pipe = accelerate(load("colorize", "tiny"), "cpu", kind="colorize")
    assert pipe.acceleration == []
    assert pipe.unet.conv_in.weight.is_contiguous()


def test_channels_last_keeps_outputs_and_compile_wraps():
    torch.set_num_threads(1)
    base = load("colorize", "tiny")
    ref = base(image=photo(64, 64), num_inference_steps=2, sag_scale=0, generator=torch.Generator().manual_seed(0))
    fast = accelerate(load("colorize", "tiny"), "cpu", kind="colorize", force=True)
    assert fast.acceleration == ["unet:channels_last", "controlnet:channels_last"]
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    out = fast(image=photo(64, 64), num_inference_steps=2, sag_scale=0, generator=torch.Generator().manual_seed(0))
    a, b = (torch.tensor(list(o.images[0].getdata()), dtype=torch.float32) for o in (ref, out))
    assert (a - b).abs().max() <= 2  # same math, another memory layout: at most rounding in uint8
    compiled = accelerate(load("colorize", "tiny"), "cpu", kind="colorize", channels_last=False, compile=True)
    assert compiled.acceleration == ["unet:compiled"] and type(compiled.unet).__name__ == "OptimizedModule"


def test_video_kinds_get_vae_slicing_and_tiling():
    pipe = accelerate(load("video.generate", "tiny"), "cpu", kind="video.generate", force=True)
    assert "vae:tiling" in pipe.acceleration
