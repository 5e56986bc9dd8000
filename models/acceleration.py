"""GPU fast paths applied once when a worker loads a pipeline (design: bf16/fp16 weights are
chosen by the loader; attention runs through PyTorch SDPA, diffusers' default processor).

- channels-last memory format for the convolution-heavy denoisers (UNet, ControlNet): cuDNN's
  fastest convolution kernels on tensor cores want NHWC;
- VAE slicing and tiling for video kinds: decode memory stays bounded by one slice/tile;
- optional `torch.compile` of the denoiser (UNet or DiT; the pipeline's own `compile_denoiser`
  when it has one), opted into per kind because the first call pays a compilation of tens of
  seconds.
On CPU everything is left as is unless `force` (tests exercise the code paths that way).
"""
from __future__ import annotations

import torch

DENOISERS = ("unet", "controlnet", "transformer")


def accelerate(pipe, device: str, *, kind: str = "", channels_last: bool = True, compile: bool = False,
               force: bool = False):
    on_gpu = torch.device(device).type == "cuda" or force
    applied: list[str] = []
    if channels_last and on_gpu:
        for name in ("unet", "controlnet"):
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
                applied.append(f"{name}:channels_last")
    vae = getattr(pipe, "vae", None)
    if on_gpu and kind.startswith("video.") and vae is not None:
        for switch in ("enable_slicing", "enable_tiling"):
            if callable(getattr(vae, switch, None)):
                getattr(vae, switch)()
                applied.append(f"vae:{switch.removeprefix('enable_')}")
    compile_denoiser = getattr(pipe, "compile_denoiser", None)
    if compile and callable(compile_denoiser):
        # a pipeline whose denoising runs through a wrapper (Tune-A-Video's inflated UNet) says
        # what to compile; compiling `pipe.unet` there would compile a module that never runs
        applied.append(f"{compile_denoiser(mode='max-autotune-no-cudagraphs')}:compiled")
    elif compile:
        for name in ("unet", "transformer"):
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                setattr(pipe, name, torch.compile(module, mode="max-autotune-no-cudagraphs"))
                applied.append(f"{name}:compiled")
                break
    pipe.acceleration = applied
    return pipe
