"""DiTCtrl (multi-prompt CogVideoX) on the tiny profile: formulas, attention control, pipeline.

Tiny CogVideoX: 2 layers, 32x32 pixels = 4x4 latents = 2x2 patches per latent frame, 2-4
steps, so a whole 105-frame, 3-segment generation takes well under a second on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from models import profiles
from models.video.ditctrl.attention import DiTCtrlAttnProcessor, DiTCtrlControl, mask_guided_attention, subject_mask
from models.video.ditctrl.layout import (blend, blend_weights, frame_count, latent_frame_count, plan, scale_window,
                                         segment_embeddings)
from models.video.ditctrl.metrics import cscv_from_features
from models.video.ditctrl.pipeline import DiTCtrlPipeline
from models.video.ditctrl.tiny import tiny_components
from models.video.media import decode_mp4, encode_mp4, thumbnail


@pytest.fixture(scope="module")
def pipe() -> DiTCtrlPipeline:
    p = DiTCtrlPipeline(**tiny_components())
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ layout and blending

def test_weight_vector_for_13_frames():
    expected = torch.tensor([1, 3, 5, 7, 9, 11, 13, 11, 9, 7, 5, 3, 1], dtype=torch.float64) / 13
    assert torch.allclose(blend_weights(13, dtype=torch.float64), expected, atol=1e-15)


@pytest.mark.parametrize("n,overlap,t,frames", [(2, 6, 1, 105), (3, 6, 1, 161), (2, 9, 2, 97), (3, 9, 2, 145),
                                                (1, 6, 1, 49), (4, 9, 2, 4 * (13 + 9 * 4 - 1) + 1)])
def test_frame_counts_follow_the_formula(n, overlap, t, frames):
    layout = plan(n, overlap, t)
    s = n + (n - 1) * t
    assert len(layout.segments) == s
    assert layout.latent_frames == 13 + (s - 1) * (13 - overlap) == latent_frame_count(s, overlap)
    assert layout.pixel_frames == frame_count(n, overlap, t) == frames
    # segments tile the long latent exactly: stride 13 - overlap, the last one ends at L
    assert [seg.start for seg in layout.segments] == [k * (13 - overlap) for k in range(s)]
    assert layout.segments[-1].start + 13 == layout.latent_frames


def test_single_prompt_segments_and_multi_prompt_check():
    layout = plan(1, overlap=6, segments=3)
    assert len(layout.segments) == 3 and {s.prompt for s in layout.segments} == {0}
    assert layout.pairs == [(0, 1), (1, 2)] and plan(1).pairs == [(0,)]
    with pytest.raises(ValueError, match="only for a single prompt"):
        plan(2, 6, 1, segments=5)
    with pytest.raises(ValueError, match="overlap"):
        plan(2, overlap=13)


def test_blending_identical_predictions_returns_them_unchanged():
    layout = plan(3, overlap=6, transition_segments=1)  # 5 segments, 41 latent frames
    long = torch.randn(1, layout.latent_frames, 4, 3, 3)
    preds = [(k, long[:, s.start: s.start + 13]) for pair in layout.pairs for k, s in ((i, layout.segments[i]) for i in pair)]
    assert torch.allclose(blend(layout, preds, long), long, atol=1e-6)


def test_blending_is_the_weight_normalised_average():
    layout = plan(2, overlap=6, transition_segments=0)  # 2 segments: frames 7..12 overlap
    like = torch.zeros(1, layout.latent_frames, 1, 1, 1)
    a, b = torch.full((1, 13, 1, 1, 1), 2.0), torch.full((1, 13, 1, 1, 1), 5.0)
    out = blend(layout, [(0, a), (1, b)], like).flatten()
    w = blend_weights(13, dtype=torch.float64)
    for f in range(layout.latent_frames):
        wa = w[f] if f < 13 else 0.0  # frame f is frame f of segment 0 and frame f - 7 of segment 1
        wb = w[f - 7] if f >= 7 else 0.0
        assert out[f].item() == pytest.approx(float((wa * 2 + wb * 5) / (wa + wb)), rel=1e-6)


def test_transition_embeddings_interpolate():
    c = [torch.randn(1, 5, 8) for _ in range(3)]
    layout = plan(3, overlap=9, transition_segments=2)  # c0, t, t, c1, t, t, c2
    got = segment_embeddings(layout, c)
    expected = [c[0], 2 / 3 * c[0] + 1 / 3 * c[1], 1 / 3 * c[0] + 2 / 3 * c[1], c[1],
                2 / 3 * c[1] + 1 / 3 * c[2], 1 / 3 * c[1] + 2 / 3 * c[2], c[2]]
    assert len(got) == 7
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_windows_scale_with_steps_and_depth():
    assert scale_window((2, 25), 50, 50) == (2, 25) and scale_window((25, 30), 30, 30) == (25, 30)
    assert scale_window((2, 25), 50, 20) == (1, 10)
    assert scale_window((25, 30), 30, 2) == (1, 2)  # the last sixth of 2 layers is still a layer
    assert scale_window((3, 5), None, 4) == (3, 4)  # absolute windows are only clipped


# ------------------------------------------------------------------ KV sharing

def attn_inputs(seed=0, batch=4, text=5, video=8, dim=32):
    g = gen(seed)
    return torch.randn(batch, video, dim, generator=g), torch.randn(batch, text, dim, generator=g)


def reference_qkv(attn, x, enc):
    """q, k, v (B, h, L, d) as CogVideoX computes them: joint sequence, then per-head LayerNorm."""
    h = torch.cat([enc, x], 1)
    q, k, v = (p(h).view(h.shape[0], h.shape[1], attn.heads, -1).transpose(1, 2) for p in (attn.to_q, attn.to_k, attn.to_v))
    return attn.norm_q(q), attn.norm_k(k), v


def project(attn, o):
    return attn.to_out[0](o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1))


def test_kv_window_target_attends_to_source_keys_and_values(pipe):
    attn = pipe.transformer.transformer_blocks[1].attn1
    x, enc = attn_inputs()
    ctl = DiTCtrlControl(step_window=(1, 2), layer_window=(1, 2), grid=(2, 2, 2))
    ctl.begin_pass()
    proc, stock = DiTCtrlAttnProcessor(1), CogVideoXAttnProcessor2_0()
    with torch.no_grad():
        plain_v, plain_t = stock(attn, x, enc)
        in_v, in_t = proc(attn, x, enc, step_index=1, ditctrl=ctl)
        out_step_v, _ = proc(attn, x, enc, step_index=0, ditctrl=ctl)  # step outside
        out_layer_v, _ = DiTCtrlAttnProcessor(0)(attn, x, enc, step_index=1, ditctrl=ctl)  # layer outside
        q, k, v = reference_qkv(attn, x, enc)
        d = q.shape[-1]
        for src, tgt in ((0, 1), (2, 3)):  # [uncond k, uncond k+1, cond k, cond k+1]
            ref = torch.softmax(q[tgt] @ k[src].transpose(-1, -2) / math.sqrt(d), dim=-1) @ v[src]
            ref = project(attn, ref[None])[0]
            assert torch.allclose(torch.cat([in_t[tgt], in_v[tgt]]), ref, atol=1e-5)
            assert torch.allclose(in_v[src], plain_v[src], atol=1e-6)  # sources unchanged
            assert not torch.allclose(in_v[tgt], plain_v[tgt], atol=1e-3)
    assert torch.allclose(out_step_v, plain_v, atol=1e-6) and torch.allclose(out_layer_v, plain_v, atol=1e-6)


def test_processor_without_control_is_the_stock_one_with_rope():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    t = tiny_components()["transformer"]
    attn = t.transformer_blocks[0].attn1
    x, enc = attn_inputs(batch=2, video=2 * 2 * 2)
    rope = get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (2, 2)), grid_size=(2, 2), temporal_size=2)
    with torch.no_grad():
        a = CogVideoXAttnProcessor2_0()(attn, x, enc, image_rotary_emb=rope)
        b = DiTCtrlAttnProcessor(0)(attn, x, enc, image_rotary_emb=rope)
    assert all(torch.allclose(i, j, atol=1e-6) for i, j in zip(a, b))


def test_kv_sharing_in_the_transformer_changes_only_the_targets(pipe):
    t = pipe.transformer
    g = gen(1)
    x = torch.randn(4, 13, 4, 4, 4, generator=g)
    emb = torch.randn(4, 32, 32, generator=g)
    ts = torch.full((4,), 500)
    ctl = DiTCtrlControl(step_window=(0, 1), layer_window=(0, 2), grid=(13, 2, 2))
    ctl.begin_pass()
    with torch.no_grad():
        plain = t(x, emb, ts, return_dict=False)[0]
        shared = t(x, emb, ts, attention_kwargs={"step_index": 0, "ditctrl": ctl}, return_dict=False)[0]
    assert torch.allclose(shared[[0, 2]], plain[[0, 2]], atol=1e-5)
    assert not torch.allclose(shared[[1, 3]], plain[[1, 3]], atol=1e-3)


# ------------------------------------------------------------------ mask guidance

def test_subject_mask_matches_the_official_aggregation():
    f, h, w, text = 3, 2, 4, 6
    cross = torch.rand(f * h * w, text, generator=gen(2))
    tokens = [1, 4]
    m = cross.reshape(f, h, w, text)[..., tokens].sum(-1)
    lo, hi = m.amin(dim=(1, 2), keepdim=True), m.amax(dim=(1, 2), keepdim=True)
    ref = ((m - lo) / (hi - lo + 1e-6) >= 0.3).flatten()
    got = subject_mask(cross, tokens, (f, h, w), 0.3)
    assert torch.equal(got, ref) and 0 < int(got.sum()) < got.numel()


def test_mask_guided_fusion_equals_reference():
    g = gen(3)
    groups, heads, text, video, d = 2, 2, 3, 8, 4
    length = text + video
    q, k, v = (torch.randn(groups, heads, length, d, generator=g) for _ in range(3))
    source_fg = torch.rand(video, generator=g) > 0.5
    target_mask = torch.rand(video, generator=g) > 0.5
    subject = [1]
    # the official attn_batch: additive (L, L) masks with finfo.min, text rows and columns open
    neg = torch.finfo(q.dtype).min
    fg = torch.zeros(length, length)
    bg = torch.zeros(length, length)
    fg[text:, text:] = torch.where(source_fg[None, :].expand(video, video), 0.0, neg)
    bg[text:, text:] = torch.where(~source_fg[None, :].expand(video, video), 0.0, neg)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    out_fg = torch.softmax(scores + fg, -1) @ v
    out_bg = torch.softmax(scores + bg, -1) @ v
    full = torch.cat([torch.zeros(text), target_mask.float()])
    full[subject] = 1.0  # 1 on the subject's text tokens
    ref = out_fg * full.view(1, 1, -1, 1) + out_bg * (1 - full.view(1, 1, -1, 1))
    got = mask_guided_attention(q, k, v, text, source_fg, target_mask)
    assert torch.allclose(got, ref, atol=1e-5)


def test_attention_maps_accumulate_over_layers_in_bounded_chunks():
    g = gen(4)
    b, heads, text, video, d = 4, 2, 3, 12, 4
    ctl = DiTCtrlControl(step_window=(0, 1), layer_window=(1, 2), grid=(3, 2, 2), mask_guided=True,
                         chunk_elements=2 * heads * (text + video) * 5)  # 5 query rows per chunk
    ctl.begin_pass([0], [2])
    refs = []
    for layer in (0, 1):
        q, k = torch.randn(b, heads, text + video, d, generator=g), torch.randn(b, heads, text + video, d, generator=g)
        ctl.record(q, k, text, layer)
        p = torch.softmax(q[-2:] @ k[-2:].transpose(-1, -2) / math.sqrt(d), -1)
        refs.append(p[:, :, text:, :text].mean(1))
    ref = (refs[0] + refs[1]) / 2
    assert torch.allclose(ctl._cross_sum / ctl._cross_count, ref, atol=1e-6)
    src, tgt = ctl.masks()
    assert torch.equal(src, subject_mask(ref[0], [0], (3, 2, 2), 0.3))
    assert torch.equal(tgt, subject_mask(ref[1], [2], (3, 2, 2), 0.3))


# ------------------------------------------------------------------ pipeline

@pytest.mark.parametrize("sampler", ["dpm", "ddim"])
def test_single_segment_equals_diffusers_cogvideox(pipe, sampler):
    comps = tiny_components()
    if sampler == "ddim":
        comps["scheduler"] = CogVideoXDDIMScheduler.from_config(comps["scheduler"].config)
    ref = CogVideoXPipeline(**comps)
    ref.set_progress_bar_config(disable=True)
    emb = pipe.encode_prompts(["a red fox runs"], 32)[0]
    ours = pipe("a red fox runs", num_inference_steps=3, sampler=sampler, generator=gen(), output_type="latent")
    theirs = ref(prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), num_frames=49, height=32, width=32,
                 num_inference_steps=3, use_dynamic_cfg=True, guidance_scale=6.0, generator=gen(),
                 output_type="latent").frames
    assert torch.allclose(ours.latents, theirs, atol=1e-4)


class Calls:
    def __init__(self, pipe):
        self.batches = []
        self.handle = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: self.batches.append(kw["hidden_states"].shape[0]),
                                                                 with_kwargs=True)


def test_two_prompts_at_paper_settings_make_105_frames(pipe):
    calls, seen = Calls(pipe), []
    try:
        out = pipe(["a red fox runs in snow", "a red fox sleeps"], overlap=6, transition_segments=1, num_inference_steps=2,
                   generator=gen(), callback_on_pair_end=lambda p, i, k, t, info: seen.append((i, k, info["calls_done"])))
    finally:
        calls.handle.remove()
    assert out.frames.shape == (105, 32, 32, 3) and out.frames.dtype == np.uint8
    assert (out.segments, out.latent_frames, out.fps) == (3, 27, 16)
    assert calls.batches == [4] * 4  # 2 pairs x 2 steps, batch [u k, u k+1, c k, c k+1]
    assert seen == [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 1, 4)]
    data = encode_mp4(out.frames, fps=out.fps)
    frames, info = decode_mp4(data)
    assert frames.shape == out.frames.shape and (info.codec, info.pix_fmt, info.fps) == ("h264", "yuv420p", 16.0)


def test_mask_guided_and_single_prompt_segments(pipe):
    kv = {"subject_tokens": ["fox"], "steps": [0, 2], "layers": [0, 2], "reference_steps": None, "reference_layers": None}
    a = pipe(["a red fox runs", "a fox sleeps"], transition_segments=0, num_inference_steps=2, generator=gen(),
             kv_sharing=kv, output_type="latent")
    b = pipe(["a red fox runs", "a fox sleeps"], transition_segments=0, num_inference_steps=2, generator=gen(),
             kv_sharing={**kv, "subject_tokens": None}, output_type="latent")
    assert a.latents.shape == (1, 20, 4, 4, 4) and torch.isfinite(a.latents).all()
    c = pipe(["a red fox runs", "a fox sleeps"], transition_segments=0, num_inference_steps=2, generator=gen(),
             kv_sharing={"enabled": False}, output_type="latent")
    assert not torch.allclose(a.latents, b.latents, atol=1e-4)  # the masks change the target's attention
    assert not torch.allclose(b.latents, c.latents, atol=1e-4)  # and KV sharing changes the video
    with pytest.raises(ValueError, match="not found"):
        pipe(["a fox", "a cat"], num_inference_steps=1, kv_sharing={"subject_tokens": ["fox"]})
    single = pipe("waves on a beach", segments=2, num_inference_steps=2, generator=gen())
    # L = 20 is even: like the official decode loop, the last latent frame is not decoded
    assert (single.segments, single.latent_frames) == (2, 20)
    assert single.frames.shape[0] == frame_count(1, 6, segments=2) == 4 * (19 - 1) + 1


def test_cancel_from_the_pair_callback_stops_within_one_call(pipe):
    calls = Calls(pipe)

    class Canceled(Exception):
        pass

    def cancel(p, i, k, t, info):
        if info["calls_done"] == 3:
            raise Canceled

    try:
        with pytest.raises(Canceled):
            pipe(["a", "b", "c"], num_inference_steps=4, generator=gen(), callback_on_pair_end=cancel)
    finally:
        calls.handle.remove()
    assert len(calls.batches) == 3  # 4 pairs per step: stopped in the middle of step 0


# ------------------------------------------------------------------ output, metric, registry

def test_mp4_round_trip_keeps_frames_and_thumbnail():
    frames = np.random.default_rng(0).integers(0, 256, (13, 48, 64, 3), dtype=np.uint8)
    data = encode_mp4(frames, fps=8)
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # faststart
    got, info = decode_mp4(data)
    assert got.shape == frames.shape and (info.frames, info.width, info.height, info.fps) == (13, 64, 48, 8.0)
    img, ctype = thumbnail(frames)
    assert ctype == "image/jpeg" and img[:2] == b"\xff\xd8"
    with pytest.raises(ValueError):
        decode_mp4(b"not a video")


def test_cscv_formula():
    angles = np.arange(8) * 0.2  # evenly spaced on a circle: equal adjacent similarity
    even = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert cscv_from_features(even) == pytest.approx(1.0)
    jump = even.copy()
    jump[4:] = np.stack([np.cos(angles[4:] + 1.0), np.sin(angles[4:] + 1.0)], 1)
    sims = np.cos(np.diff(np.r_[angles[:4], angles[4:] + 1.0]))
    assert cscv_from_features(jump) == pytest.approx(1 / (1 + np.std(sims) / np.mean(sims) * 10))
    scorer = profiles.load_cscv("tiny")
    frames = np.random.default_rng(1).integers(0, 256, (5, 40, 60, 3), dtype=np.uint8)
    assert scorer.features(frames).shape == (5, 32) and 0 < scorer(frames) <= 1


def test_registry_tiny_and_pretrained_round_trip(tmp_path):
    tiny = profiles.load_video_generation("tiny")
    root = tmp_path / profiles.COGVIDEOX_DIR
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        getattr(tiny, name).save_pretrained(root / name)
    CogVideoXDDIMScheduler.from_config(tiny.scheduler.config).save_pretrained(root / "scheduler")  # as shipped
    assert profiles.missing_weights("video.generate", tmp_path) == []
    loaded = profiles.load_video_generation("auto", tmp_path)
    assert loaded.model_profile == "pretrained" and type(loaded.scheduler).__name__ == "CogVideoXDPMScheduler"
    loaded.set_progress_bar_config(disable=True)
    tiny.set_progress_bar_config(disable=True)
    a = tiny("a fox", num_inference_steps=2, generator=gen(), output_type="latent").latents
    b = loaded("a fox", num_inference_steps=2, generator=gen(), output_type="latent").latents
    assert torch.allclose(a, b, atol=1e-5)


def test_chunked_decode_equals_the_vae_decode(pipe):
    z = torch.randn(1, 15, 4, 4, 4, generator=gen(6))
    got = pipe.decode_latents(z)
    with torch.no_grad():
        x = pipe.vae.decode(z.permute(0, 2, 1, 3, 4) / pipe.vae.config.scaling_factor).sample
    ref = (x / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 3, 0).numpy()
    assert got.shape == (4 * 14 + 1, 32, 32, 3) and np.array_equal(got, ref)


def test_eta_is_refused_rather_than_ignored(pipe):
    """The official DPM++ 2M SDE sampler has no eta, and diffusers' CogVideoX DPM and DDIM steps
    accept one without reading it (a run at eta 0.5 used to equal eta 0): refused, naming it."""
    for sampler in ("dpm", "ddim"):
        with pytest.raises(ValueError, match=r"`eta` 0.5 would have no effect"):
            pipe("a red fox runs", num_inference_steps=1, sampler=sampler, eta=0.5, generator=gen(),
                 output_type="latent")
    assert pipe("a red fox runs", num_inference_steps=1, eta=0, generator=gen(), output_type="latent").latents is not None
