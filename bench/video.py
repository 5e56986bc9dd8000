"""Video benchmarks side by side: DiTCtrl on CogVideoX (bench/video_ditctrl.py) and Tune-A-Video
(bench/video_tuneavideo.py), one run, one table.

    python bench/video.py              # tiny profiles on the CPU
    python bench/video.py --quick      # fewer repeats / tuning steps (same per-job settings)
    python bench/video.py --full       # + full-size random CogVideoX-2B and SD-1.5 on CUDA

Each measurement runs in its own spawned process, so the CPU "peak" (the process's peak RSS,
which only grows) belongs to that benchmark alone; on CUDA the peak is
torch.cuda.max_memory_allocated. DiTCtrl: one 49-frame clip (1 prompt, 1 segment) vs 2 prompts
at the paper's settings (overlap 6, 1 transition segment: 105 frames), best of N, 50 steps;
for scale, the CogVideoX-2B model card cites ~90 s per clip on an A100 and ~45 s on an H100.
Tune-A-Video: tuning seconds per step (batch 1, AdamW), DDIM inversion (50 steps, no CFG) and
sampling (50 steps, CFG 12.5) seconds per video; the original README reports 10-15 min for
300-500 tuning steps of 24 frames on an A100. Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchOptions, cuda_available, print_and_save, row  # noqa: E402


def _ditctrl(kw: dict) -> dict:
    from bench.video_ditctrl import measure

    return measure(verbose=False, **kw)


def _tuneavideo(kw: dict) -> list[dict]:
    from bench.video_tuneavideo import measure

    return measure(**kw)


def _isolated(fn, kw: dict):
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, kw).result()


def ditctrl_rows(r: dict) -> list[dict]:
    case = f"DiTCtrl, {r['profile']}, {r['device']} ({r['size'][0]}x{r['size'][1]}, {r['steps']} steps)"
    note_mem = "process peak RSS" if r["device"] == "cpu" else "max_memory_allocated"
    out = []
    for x in r["rows"]:
        label = x["name"].split(" (")[0] if x["name"].startswith("CogVideoX") else x["name"]
        out += [row(case, f"{label}: seconds", x["seconds"], "s", f"{x['frames']} frames, best of {r['repeat']}"),
                row(case, f"{label}: peak memory", x["peak_mib"], "MiB", note_mem)]
    out.append(row(case, "ratio DiTCtrl 2 prompts / clip", r["ratio_ditctrl_over_clip"], "x",
                   "transformer work 4x per step + longer decode"))
    if r.get("ratio_mask_over_plain") is not None:
        out.append(row(case, "ratio mask-guided / plain KV sharing", r["ratio_mask_over_plain"], "x"))
    out.append(row(case, "MP4 encode", r["mp4_encode_s"], "s", f"{r['mp4_frames']} frames, H.264 yuv420p"))
    return out


def tuneavideo_rows(rows: list[dict], steps: int) -> list[dict]:
    out = []
    for r in rows:
        case = f"Tune-A-Video, {r['name']}, {r['device']} ({r['frames']} frames, {r['size']}x{r['size']})"
        out += [row(case, "tuning", r["tune_s_per_step"], "s/step", "batch 1, AdamW"),
                row(case, "tuning, 500 steps", r["tune_500_steps_min"], "min", "extrapolated"),
                row(case, "tuning peak memory", r["tune_peak_gib"], "GiB"),
                row(case, "DDIM inversion", r["invert_s"], "s", f"{steps} steps, no CFG"),
                row(case, "sampling", r["sample_s_per_video"], "s/video", f"{steps} steps, CFG 12.5"),
                row(case, "sampling peak memory", r["sample_peak_gib"], "GiB"),
                row(case, "trainable parameters", r["trainable_m"], "M"),
                row(case, "tuned artifact", r["artifact_mib"], "MiB")]
    return out


def collect(opts: BenchOptions | None = None, *, full: bool | None = None) -> dict:
    opts = opts or BenchOptions()
    full = (opts.gpu and cuda_available()) if full is None else full
    dit_kw = {"repeat": 1 if opts.quick else 3, "steps": 50, "threads": 1, "mask": True}
    tav_kw = {"tune_steps": 3 if opts.quick else 5, "steps": 50, "threads": 1}
    settings = {"ditctrl": {"tiny": dit_kw}, "tuneavideo": {"tiny": tav_kw}}
    print("DiTCtrl tiny ...", flush=True)
    results = {"ditctrl": [_isolated(_ditctrl, dit_kw)]}
    print("Tune-A-Video tiny ...", flush=True)
    results["tuneavideo"] = _isolated(_tuneavideo, tav_kw)
    if full:
        full_dit = {"full": True, "repeat": 1, "steps": 20 if opts.quick else 50, "mask": not opts.quick}
        full_tav = {"full": True, "tune_steps": 3 if opts.quick else 5, "steps": 50}
        settings["ditctrl"]["full-random"], settings["tuneavideo"]["full-random"] = full_dit, full_tav
        print("DiTCtrl full-size (CUDA) ...", flush=True)
        results["ditctrl"].append(_isolated(_ditctrl, full_dit))
        print("Tune-A-Video full-size (CUDA) ...", flush=True)
        results["tuneavideo"] += [r for r in _isolated(_tuneavideo, full_tav) if r["name"] != "tiny"]
    rows = [x for r in results["ditctrl"] for x in ditctrl_rows(r)]
    rows += tuneavideo_rows(results["tuneavideo"], tav_kw["steps"])
    return {"settings": settings, "rows": rows, "details": results}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true", help="also the full-size random models on CUDA")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/video_<tiny|full>[_quick].json)")
    args = ap.parse_args(argv)
    if args.full and not cuda_available():
        sys.exit("--full needs a CUDA GPU")
    res = collect(BenchOptions(quick=args.quick), full=args.full)
    return print_and_save("video", res, args.out, f"video_{'full' if args.full else 'tiny'}{'_quick' if args.quick else ''}")


if __name__ == "__main__":
    main()
