"""Subject-driven generation: seconds per in-context image (BLIP-Diffusion), per 400-step
DreamBooth-LoRA tuning, per expert image; class-image generation; peak memory. One table.

    python bench/subject.py              tiny profile on the CPU (64x64 px)
    python bench/subject.py --quick      fewer timed tuning steps
    python bench/subject.py --full       + full-size architectures with random weights on CUDA
                                         (SD 1.5 UNet/VAE, CLIP ViT-L/14 text tower, BLIP-2
                                         Q-Former over a 23-layer ViT-L/14; 512x512, fp16; LoRA
                                         tuning fp16-mixed with gradient checkpointing)

Settings are the methods' defaults: 50 PNDM steps with CFG 7.5 for every image, LoRA rank 4 at
lr 1e-4 on one instance photo + one class image per step (prior preservation on). The tuning
time is measured over `tune_steps` timed steps after a warm-up step and scaled to 400 (the
tiny CPU run times 40, --quick 10; the full-size run times all 400 unless told fewer). The
first-image ratio (expert: 400 tuning steps + one image, against one in-context image) is the
anchor: what tuning costs next to the tuning-free route. Class images are reported per image
(DreamBooth-LoRA's prior preservation needs about 100 of them, once per class).

Service overhead (tiny, CPU): the same in-context and reused-subject-model expert images
through the API (embedded arrangement in one process: the app under a test client, a worker
thread polling the same SQLite store, the local object store), client clock from the photo
uploads to the final state in hand, next to the direct pipeline call with the same settings,
interleaved job by job (the worker thread stopped during each direct call). The difference is
what the service adds (uploads, validation, queue,
claim, decode, progress writes and cancel checks at every step, PNG encode and storage).

Each method runs in its own spawned process, so the CPU peak (the process's peak RSS, which
only grows) belongs to it; on CUDA the peak is torch.cuda.max_memory_allocated per phase.
Random weights have the real architectures' FLOPs and memory; outputs are noise. Figures are
printed, never asserted.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchOptions, cuda_available, print_and_save, row  # noqa: E402

TUNE_400 = 400
STEPS = 50


def _peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _timed(fn, device: str):
    """(output, seconds, peak MiB) of one call."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t, _peak_mib(device)


def _photos(n: int = 3):
    """n views of one subject (skimage's Chelsea the cat): shifted crops, every other mirrored."""
    import skimage.data
    from PIL import Image, ImageOps

    cat = Image.fromarray(skimage.data.chelsea())  # 451 x 300
    views = []
    for i in range(n):
        x = 20 + 40 * (i % 4)
        view = cat.crop((x, 0, x + 300, 300)).resize((512, 512), Image.BICUBIC)
        views.append(ImageOps.mirror(view) if i % 2 else view)
    return views


# DreamBench-style live-subject prompts (the benchmark has 25 per subject)
SCENES = ("in the jungle", "in the snow", "on the beach")


def _dreambench(images_by_scene: dict, photos, subject_class: str) -> dict:
    """Mean CLIP-I / CLIP-T / DINO over the scenes, with the tiny profile's encoders."""
    from models.subject.loader import load_subject_metrics

    scorer = load_subject_metrics("tiny")
    per = [scorer.score(images, photos, f"a {subject_class} {scene}") for scene, images in images_by_scene.items()]
    return {k: sum(p[k] for p in per) / len(per) for k in per[0]}


# ------------------------------------------------------------------ full-size, random weights

def _sd15(device, dtype):
    """SD 1.5's UNet and VAE with random weights, built on the device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
    cast = (lambda m: m.to(dtype)) if dtype != torch.float32 else (lambda m: m)  # to() on a model warns
    return cast(unet).eval(), cast(vae).eval()


def _clip_l_text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


def full_incontext(device: str, dtype):
    """BLIP-Diffusion's released architecture (16 queries, Q-Former cross-attending every layer
    to a 23-layer ViT-L/14 at 224 px) with random weights. Tokenizers: the tiny code-built ones
    (their ids fit the real vocabularies; the text length is fixed by padding)."""
    import tempfile

    import torch
    from transformers import Blip2Config

    from models.colorization.tiny import tiny_tokenizer
    from models.subject import tiny
    from models.subject.blip import SubjectQFormer, SubjectTextEncoder
    from models.subject.incontext import InContextSubjectPipeline
    from diffusers.pipelines.deprecated.blip_diffusion import BlipImageProcessor

    tokenizer = tiny_tokenizer()
    config = Blip2Config(vision_config=dict(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16,
                                            image_size=224, patch_size=14, intermediate_size=4096,
                                            hidden_act="quick_gelu", initializer_range=0.02),
                         qformer_config=dict(cross_attention_frequency=1, encoder_hidden_size=1024, vocab_size=30523),
                         num_query_tokens=16)
    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        config.tokenizer = str(tiny.write_bert_tokenizer(tmp))
        qformer = SubjectQFormer(config).eval()  # float32, as the loader keeps it
        text_encoder = SubjectTextEncoder(_clip_l_text_config(tokenizer)).to(dtype).eval()
    unet, vae = _sd15(device, dtype)
    pipe = InContextSubjectPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                                    scheduler=tiny.scheduler(), qformer=qformer,
                                    image_processor=BlipImageProcessor(size={"height": 224, "width": 224}),
                                    default_size=512)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def full_expert(device: str, dtype):
    import torch
    from transformers import CLIPTextModel

    from models.colorization.tiny import tiny_tokenizer
    from models.subject import tiny
    from models.subject.expert import DreamBoothLoRAPipeline

    tokenizer = tiny_tokenizer()
    with torch.device(device):
        text_encoder = CLIPTextModel(_clip_l_text_config(tokenizer)).to(dtype).eval()
    unet, vae = _sd15(device, dtype)
    pipe = DreamBoothLoRAPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                  scheduler=tiny.scheduler(), base_model_id="sd15-random", default_size=512)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ------------------------------------------------------------------ measurements

def _setup(kw: dict):
    import torch

    torch.set_num_threads(kw.get("threads", 1))
    device = kw["device"]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return torch, device, dtype


def measure_incontext(kw: dict) -> dict:
    torch, device, dtype = _setup(kw)
    from models.subject.loader import load_subject_incontext

    pipe = full_incontext(device, dtype) if kw["full"] else load_subject_incontext("tiny", device=device)
    size = pipe.config.default_size
    photos = _photos(3)
    gen = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731
    call = lambda: pipe("swimming underwater", photos, "cat", num_inference_steps=STEPS,  # noqa: E731
                        generator=gen(), output_type="np")
    call()  # warm-up
    _, subject_s, _ = _timed(lambda: pipe.encode_subject(photos, "cat"), device)
    out, seconds, peak = _timed(call, device)
    assert out.images.shape == (1, size, size, 3)
    fig = dict(name="full-random" if kw["full"] else "tiny", device=device, size=size,
               subject_photos=len(photos), query_tokens=pipe.num_query_tokens,
               encode_subject_s=subject_s, s_per_image=seconds, peak_mib=peak)
    if kw.get("metrics"):
        subject = pipe.encode_subject(photos, "cat")
        fig["dreambench"] = _dreambench({scene: pipe(scene, subject_class="cat", subject=subject, generator=gen(),
                                                     num_inference_steps=STEPS).images for scene in SCENES},
                                        photos, "cat")
    return fig


def measure_expert(kw: dict) -> dict:
    torch, device, dtype = _setup(kw)
    from models.subject.expert import expert_prompt
    from models.subject.loader import load_subject_expert

    pipe = full_expert(device, dtype) if kw["full"] else load_subject_expert("tiny", device=device)
    size = pipe.config.default_size
    photos = _photos(3)
    gen = lambda s=0: torch.Generator("cpu").manual_seed(s)  # noqa: E731
    fig = dict(name="full-random" if kw["full"] else "tiny", device=device, size=size)

    class_images, seconds, peak = _timed(lambda: pipe.generate_class_images(
        "cat", num_images=2, num_inference_steps=STEPS, generator=gen(1), batch_size=2), device)
    fig.update(class_s_per_image=seconds / 2, class_peak_mib=peak)

    n = kw["tune_steps"]
    stamps = []

    def stamp(p, i, t, cb_kw):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    out, total_s, peak = _timed(lambda: pipe.tune(photos, "cat", num_steps=n + 1, prior_preservation=True,
                                                  class_images=class_images[:1], generator=gen(2),
                                                  callback_on_step_end=stamp), device)
    per_step = (stamps[-1] - stamps[0]) / n  # after the first (warm-up) step
    fig.update(tune_timed_steps=n, tune_s_per_step=per_step, tune_400_s=per_step * TUNE_400,
               tune_setup_s=total_s - (stamps[-1] - stamps[0]), tune_peak_mib=peak,
               loss_finite=all(map(lambda v: v == v, out.losses)))
    art = pipe.export_lora()
    fig.update(lora_params_m=art.meta["num_parameters"] / 1e6, artifact_mib=len(art.weights) / 2**20)

    prompt = expert_prompt("swimming underwater", "sks", "cat")
    pipe.generate(prompt, num_inference_steps=2, generator=gen(3))  # warm-up
    images, seconds, peak = _timed(lambda: pipe.generate(prompt, num_inference_steps=STEPS, generator=gen(3),
                                                         output_type="np").images, device)
    assert images.shape == (1, size, size, 3)
    fig.update(s_per_image=seconds, peak_mib=peak)
    if kw.get("metrics"):
        if n + 1 < TUNE_400:  # the quality figures are of a full 400-step tuning
            pipe.tune(photos, "cat", num_steps=TUNE_400, prior_preservation=True, class_images=class_images[:1],
                      generator=gen(2))
        fig["dreambench"] = _dreambench({scene: pipe.generate(expert_prompt(scene, "sks", "cat"), generator=gen(3),
                                                              num_inference_steps=STEPS).images for scene in SCENES},
                                        photos, "cat")
    return fig


def measure_api(kw: dict) -> dict:
    """Through the API vs direct, tiny profile; n jobs of each, interleaved."""
    import io
    import tempfile
    import threading

    torch, device, dtype = _setup(kw)
    from fastapi.testclient import TestClient

    from models.subject.expert import expert_prompt
    from service.app import build_context, create_app
    from worker.config import WorkerSettings
    from worker.process import poll_loop
    from worker.runner import Runner

    n, size, steps = kw["api_jobs"], 64, STEPS
    photos = [p.resize((size, size)) for p in _photos(3)]

    def png(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    blobs = [png(p) for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        settings = WorkerSettings(data_dir=Path(tmp), redis_url=None, s3_bucket=None, model_profile="tiny",
                                  allow_anonymous=True, refuse_unserved=False, progress_interval_s=0.25, device=device)
        ctx = build_context(settings, anonymous=True)
        runner = Runner(settings, ctx.store, ctx.objects, name="bench")
        worker: dict = {}

        def start_worker():
            worker["stop"] = threading.Event()
            worker["thread"] = threading.Thread(target=poll_loop, daemon=True, args=(
                runner, ["subject.generate", "subject.tune"], worker["stop"], 0.01))
            worker["thread"].start()

        def stop_worker():
            worker["stop"].set()
            worker["thread"].join(timeout=60)

        def direct(fn) -> float:  # with the worker's poll loop stopped: it would share the CPU
            stop_worker()
            try:
                return _timed(fn, device)[1]
            finally:
                start_worker()

        start_worker()
        try:
            with TestClient(create_app(ctx, run_reaper=False)) as api:
                def through_api(body: dict, with_photos: bool = True) -> float:
                    t = time.perf_counter()
                    if with_photos:
                        body = {**body, "subject_images": [
                            api.post("/v1/uploads", files={"file": ("p.png", b, "image/png")}).json()["id"]
                            for b in blobs]}
                    job = api.post("/v1/subject-generations", json=body).json()
                    while job["status"] not in ("succeeded", "failed", "canceled"):
                        job = api.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
                    assert job["status"] == "succeeded", job["error"]
                    return time.perf_counter() - t

                common = dict(prompt="swimming underwater", steps=steps, width=size, height=size, seed=0)
                ic_body = dict(subject_class="cat", method="in_context", **common)
                through_api(ic_body)  # warm-up: loads the pipeline in the worker
                incontext = runner.pipeline("subject.in_context", "subject.generate")
                gen = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731
                direct_ic = lambda: incontext("swimming underwater", photos, "cat", num_inference_steps=steps,  # noqa: E731
                                              height=size, width=size, generator=gen())
                api_ic, dir_ic = [], []
                for _ in range(n):
                    api_ic.append(through_api(ic_body))
                    dir_ic.append(direct(direct_ic))

                tuned = api.post("/v1/subject-models", json={
                    "subject_images": [api.post("/v1/uploads", files={"file": ("p.png", b, "image/png")}).json()["id"]
                                       for b in blobs], "subject_class": "cat", "steps": 10, "seed": 0}).json()
                while tuned["status"] not in ("succeeded", "failed", "canceled"):
                    tuned = api.get(f"/v1/jobs/{tuned['id']}", params={"wait": 30}).json()
                model_id = tuned["result"]["subject_model"]
                ex_body = dict(subject_model=model_id, **common)
                through_api(ex_body, with_photos=False)
                expert = runner.pipeline("subject.expert", "subject.generate")
                from models.subject.lora import LoraArtifact

                rec = ctx.store.get_resource("subject_model", model_id)
                artifact = LoraArtifact.from_parts(ctx.objects.get(rec["prefix"] + "weights.safetensors"),
                                                   ctx.objects.get(rec["prefix"] + "meta.json"))

                def direct_ex():
                    expert.load_lora(artifact)  # what the job does too: the adapter per job
                    try:
                        return expert.generate(expert_prompt("swimming underwater", "sks", "cat"),
                                               num_inference_steps=steps, height=size, width=size, generator=gen())
                    finally:
                        expert.unload_lora()

                api_ex, dir_ex = [], []
                for _ in range(n):
                    api_ex.append(through_api(ex_body, with_photos=False))
                    dir_ex.append(direct(direct_ex))
        finally:
            stop_worker()
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return dict(jobs=n, size=size, api_incontext_s=med(api_ic), direct_incontext_s=med(dir_ic),
                api_expert_s=med(api_ex), direct_expert_s=med(dir_ex))


def api_rows(fig: dict) -> list[dict]:
    case = f"tiny, cpu, through the API vs direct ({fig['size']}x{fig['size']}, {STEPS} steps, median of {fig['jobs']})"
    out = []
    for label, key, note in (("in-context", "incontext", "3 photo uploads + submit + long-poll"),
                             ("expert, reused subject model", "expert", "submit + long-poll; LoRA loaded per job")):
        api_s, direct_s = fig[f"api_{key}_s"], fig[f"direct_{key}_s"]
        out += [row(case, f"{label}: through the API", api_s, "s/job", note),
                row(case, f"{label}: direct pipeline call", direct_s, "s/image", "the anchor"),
                row(case, f"{label}: service overhead", api_s - direct_s, "s/job", "API - direct"),
                row(case, f"{label}: ratio API / direct", api_s / direct_s, "x", "")]
    return out


def _isolated(fn, kw: dict):
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, kw).result()


def rows_for(ic: dict, ex: dict) -> list[dict]:
    case = f"{ic['name']}, {ic['device']} ({ic['size']}x{ic['size']}, {STEPS} PNDM steps, CFG 7.5)"
    mem = "max_memory_allocated" if ic["device"].startswith("cuda") else "process peak RSS"
    scaled = f"{ex['tune_timed_steps']} timed steps x {TUNE_400 / ex['tune_timed_steps']:g}"
    first_expert = ex["tune_400_s"] + ex["s_per_image"]
    out = [
        row(case, "in-context: image", ic["s_per_image"], "s/image",
            f"BLIP-Diffusion, {ic['subject_photos']} photos averaged, {ic['query_tokens']} queries"),
        row(case, "in-context: subject encoding", ic["encode_subject_s"], "s", "Q-Former, once per request"),
        row(case, "in-context: peak memory", ic["peak_mib"], "MiB", mem),
        row(case, "expert: LoRA tuning, 400 steps", ex["tune_400_s"], "s", f"{scaled}; rank 4, prior preservation"),
        row(case, "expert: tuning step", ex["tune_s_per_step"], "s/step", "instance + class image, AdamW"),
        row(case, "expert: tuning peak memory", ex["tune_peak_mib"], "MiB", mem),
        row(case, "expert: image", ex["s_per_image"], "s/image", "SD 1.5 + LoRA"),
        row(case, "expert: image peak memory", ex["peak_mib"], "MiB", mem),
        row(case, "expert: class image", ex["class_s_per_image"], "s/image", "prior preservation, ~100 per class"),
        row(case, "expert: LoRA artifact", ex["artifact_mib"], "MiB", f"{ex['lora_params_m']:.3f} M parameters"),
        row(case, "ratio first image expert / in-context", first_expert / ic["s_per_image"], "x",
            "400 tuning steps + 1 image vs 1 image"),
    ]
    for method, fig in (("in-context", ic), ("expert", ex)):
        for metric, value in fig.get("dreambench", {}).items():
            out.append(row(case, f"{method}: {metric.upper().replace('_', '-')}", value, "",
                           f"tiny encoders, random weights: NOT comparable; {len(SCENES)} scenes"))
    return out


def collect(opts: BenchOptions | None = None, *, full: bool | None = None, tune_steps: int | None = None) -> dict:
    opts = opts or BenchOptions()
    full = (opts.gpu and cuda_available()) if full is None else full
    tiny_kw = {"full": False, "device": "cpu", "threads": 1, "tune_steps": tune_steps or (10 if opts.quick else 40),
               "metrics": not opts.quick}
    settings = {"tiny": tiny_kw}
    print("subject, tiny (CPU) ...", flush=True)
    results = [(_isolated(measure_incontext, tiny_kw), _isolated(measure_expert, tiny_kw))]
    if full:
        full_kw = {"full": True, "device": "cuda", "tune_steps": tune_steps or (50 if opts.quick else TUNE_400)}
        settings["full-random"] = full_kw
        print("subject, full-size random (CUDA) ...", flush=True)
        results.append((_isolated(measure_incontext, full_kw), _isolated(measure_expert, full_kw)))
    rows = [r for ic, ex in results for r in rows_for(ic, ex)]
    print("subject, through the API (tiny, CPU) ...", flush=True)
    api_kw = {"device": "cpu", "threads": 1, "api_jobs": 3 if opts.quick else 5}
    settings["api"] = api_kw
    api = _isolated(measure_api, api_kw)
    rows += api_rows(api)
    return {"settings": settings, "rows": rows,
            "details": [{"in_context": ic, "expert": ex} for ic, ex in results] + [{"api": api}]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true", help="also the full-size random models on CUDA")
    ap.add_argument("--tune-steps", type=int, default=None, help="timed tuning steps (scaled to 400)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/subject_<tiny|full>[_quick].json)")
    args = ap.parse_args(argv)
    if args.full and not cuda_available():
        sys.exit("--full needs a CUDA GPU")
    res = collect(BenchOptions(quick=args.quick), full=args.full, tune_steps=args.tune_steps)
    return print_and_save("subject", res, args.out, f"subject_{'full' if args.full else 'tiny'}{'_quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
