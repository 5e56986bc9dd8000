"""Benchmark of the Control Color pipeline (models/colorization), no API: seconds per image and
UNet+ControlNet passes per image, side by side for SAG on/off and batch 1/4 (plus
autoguidance and the deformable decoder as extra rows), and per call the time of the BLIP
caption step (the input has no prompt, so it is captioned, as the official demo) next to the
denoising loop's.

    python bench/colorize.py                 # tiny profile on the CPU (64 px short side, 20 steps)
    python bench/colorize.py --full          # SD-1.5-size UNet + ControlNet + VAE, random weights,
                                             # 512x512, 20 steps, fp16 on CUDA; peak GPU memory

`--full` builds the real architectures (9-channel inpainting UNet, SD-1.5 ControlNet, SD VAE,
CLIP ViT-L/14 text tower, ViT-B/32 exemplar tower, the deformable VAE; a half-width guide pair
for autoguidance; BLIP base for the caption) with random weights: the FLOPs and memory of the
released model, not its images. "passes/img" counts latent items through a UNet+ControlNet pair per output image
(CFG = 2 per step; a SAG step adds the same again; autoguidance's guide passes included).
Results print as a table and go to bench/results/colorize_<profile>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from models.colorization.pipeline import ControlColorPipeline  # noqa: E402


def full_components(dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from models.colorization import tiny
    from models.colorization.convert import CONTROLNET_CONFIG, UNET_CONFIG, VAE_CONFIG
    from models.colorization.deformable import ContentGuidedVAE

    torch.manual_seed(0)
    caption_model, caption_processor = blip_base()
    half = dict(block_out_channels=(160, 320, 640, 640))  # the weaker guide: same family, half width
    text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    parts = dict(
        unet=UNet2DConditionModel(**UNET_CONFIG),
        controlnet=ControlNetModel(**CONTROLNET_CONFIG),
        vae=AutoencoderKL(**VAE_CONFIG),
        text_encoder=CLIPTextModel(text),
        tokenizer=tiny.tiny_tokenizer(),  # byte-level ids fit CLIP's vocabulary; only shapes matter here
        scheduler=tiny.tiny_scheduler(),
        image_encoder=CLIPVisionModel(CLIPVisionConfig()),  # ViT-B/32
        deformable_vae=ContentGuidedVAE(vae_config=dict(VAE_CONFIG)),
        guide_unet=UNet2DConditionModel(**{**UNET_CONFIG, **half}),
        guide_controlnet=ControlNetModel(**{**CONTROLNET_CONFIG, **half}),
        caption_model=caption_model,
        caption_processor=caption_processor,
    )
    return {k: ((v.to(dtype) if dtype != torch.float32 else v).eval() if isinstance(v, torch.nn.Module) else v)
            for k, v in parts.items()}


def blip_base():
    """Salesforce/blip-image-captioning-base's architecture (BlipConfig() defaults: ViT-B/16 at
    384 px, a 12-layer BERT-base decoder) with random weights, and a processor whose tokenizer
    has BLIP's vocabulary size and special-token ids (placeholder words elsewhere)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    config = BlipConfig()
    vocab = [f"w{i}" for i in range(config.text_config.vocab_size)]
    for i, tok in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 30522: "[DEC]",
                   30523: "[ENC]"}.items():
        vocab[i] = tok
    vocab[1000:1003] = ["a", "picture", "of"]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 384, "width": 384}),
                              tokenizer=tokenizer)
    return BlipForConditionalGeneration(config).eval(), processor


def build(args) -> tuple[ControlColorPipeline, str]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device == "cuda" else torch.float32
    if args.full:
        pipe = ControlColorPipeline(**full_components(dtype), short_side=args.size, max_long_side=3 * args.size)
    else:
        from models.colorization import tiny

        pipe = ControlColorPipeline(**tiny.tiny_components(), short_side=args.size, max_long_side=3 * args.size)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, device


CASES = [  # (label, kwargs)
    ("cfg, SAG on, batch 1", dict(num_images=1)),
    ("cfg, SAG off, batch 1", dict(num_images=1, sag_scale=0.0)),
    ("cfg, SAG on, batch 4", dict(num_images=4)),
    ("cfg, SAG off, batch 4", dict(num_images=4, sag_scale=0.0)),
    ("autoguidance, SAG on, batch 1", dict(num_images=1, guidance={"mode": "autoguidance", "scale": 2.0})),
    ("cfg, SAG on, deformable decoder, batch 1", dict(num_images=1, deformable_decoder=True)),
]


def run_case(pipe, device, image, steps, repeats, kw) -> dict:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    pipe(image, num_inference_steps=1, generator=torch.Generator().manual_seed(0), **kw)  # warm-up, untimed
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, out, caption_s, denoise_s = [], None, [], []
    for r in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(r), **kw)
        sync()
        times.append(time.perf_counter() - t0)
        caption_s.append(out.timings["caption"])
        denoise_s.append(out.timings["denoise"])
    n = kw.get("num_images", 1)
    row = {
        "seconds_per_image": float(np.median(times)) / n,
        "seconds_per_call": float(np.median(times)),
        "caption_seconds": float(np.median(caption_s)),  # the BLIP caption of the empty prompt, per call
        "denoise_seconds": float(np.median(denoise_s)),  # the DDIM loop (SAG and guidance passes included)
        "caption": out.caption,
        "passes_per_image": out.passes_per_image,
        "sag_steps": out.sag_steps,
        "batch": n,
        "working_size": list(out.working_size),
    }
    if device == "cuda":
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="SD-1.5-size random-weight models (meant for a GPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=None, help="square input side (default 64 tiny, 512 full)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)")
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (1-based) to run")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/colorize_<profile>_<device>.json)")
    args = ap.parse_args(argv)
    args.size = args.size or (512 if args.full else 64)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe, device = build(args)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    gray = (rng.random((args.size, args.size)) * 255).astype(np.uint8)
    image = Image.fromarray(gray, "L")
    cases = CASES if not args.cases else [CASES[int(i) - 1] for i in args.cases.split(",")]
    profile = "full-random" if args.full else "tiny"
    results = []
    for label, kw in cases:
        row = {"case": label, **run_case(pipe, device, image, args.steps, args.repeats, kw)}
        results.append(row)
        mem = f"{row['peak_gpu_memory_gib']:8.2f}" if "peak_gpu_memory_gib" in row else "       -"
        print(f"{label:42s} {row['seconds_per_image']:10.4f} {row['passes_per_image']:10.1f} {mem} "
              f"{row['caption_seconds']:10.4f} {row['denoise_seconds']:10.4f}", flush=True)
    report = {
        "profile": profile, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(pipe.unet.dtype), "steps": args.steps, "image_size": [args.size, args.size],
        "repeats": args.repeats, "threads": args.threads, "build_seconds": build_s,
        "torch": torch.__version__, "results": results,
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"colorize_{profile}_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{profile} on {report['device_name']} ({device}, {report['dtype']}), {args.steps} steps, "
          f"{args.size}x{args.size}; wrote {out}")
    return report


def collect(opts=None) -> dict:
    """For bench/run.py: the tiny CPU table, plus the full-size random models on CUDA when a GPU
    is present (and opts.gpu). Same cases and steps as the CLI; the median of 2 timed runs per
    case (--quick: 1)."""
    import tempfile

    from bench.common import BenchOptions, cuda_available, row

    opts = opts or BenchOptions()
    repeats = "1" if opts.quick else "2"
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        reports.append(main(["--repeats", repeats, "--device", "cpu", "--out", f"{tmp}/tiny.json"]))
        if opts.gpu and cuda_available():
            reports.append(main(["--full", "--repeats", repeats, "--device", "cuda", "--out", f"{tmp}/full.json"]))
    rows = []
    for rep in reports:
        size = "x".join(map(str, rep["image_size"]))
        for r in rep["results"]:
            case = f"{rep['profile']}, {rep['device']} {rep['dtype'].removeprefix('torch.')}, {size}, " \
                   f"{rep['steps']} steps: {r['case']}"
            rows += [row(case, "seconds per image", r["seconds_per_image"], "s",
                         f"median of {rep['repeats']}, batch {r['batch']}"),
                     row(case, "caption step per call", r["caption_seconds"], "s", "BLIP, beam 3, 10-30 tokens"),
                     row(case, "denoising per call", r["denoise_seconds"], "s", f"{rep['steps']} DDIM steps"),
                     row(case, "UNet+ControlNet passes per image", r["passes_per_image"], "",
                         f"SAG steps {r['sag_steps']}")]
            if "peak_gpu_memory_gib" in r:
                rows.append(row(case, "peak GPU memory", r["peak_gpu_memory_gib"], "GiB"))
    settings = [{k: v for k, v in rep.items() if k != "results"} for rep in reports]
    return {"settings": settings, "rows": rows, "details": reports}


if __name__ == "__main__":
    print(f"{'case':42s} {'s/image':>10s} {'passes/img':>10s} {'peak GiB':>8s} {'caption s':>10s} {'denoise s':>10s}")
    main()
