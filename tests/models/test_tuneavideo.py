"""Tune-A-Video on the tiny profile: the inflated UNet's defining properties, tuning, DDIM
inversion, the tuned-model artifact and clip decoding. Real properties, not smoke.

Everything runs at 64x64 px (8x8 latents) with 1-4 frames, so the file stays well under a
minute and a half on 2 shared CPU cores.
"""

from __future__ import annotations

import copy
import inspect
import io
import shutil

import av
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from models import profiles
from models.profiles import MODEL_DIR_ENV, TUNEAVIDEO_BASE_DIR, WeightsMissing, load_video_edit, required_weights
from models.video.tuneavideo import pipeline as tav
from models.video.tuneavideo.artifact import ArtifactMismatch, TunedArtifact
from models.video.tuneavideo.clip import (
    VideoDecodeError,
    VideoLimitError,
    read_clip,
    resize_center_crop,
    sample_indices,
)
from models.video.tuneavideo.inflate import (
    FrameContext,
    SparseCausalAttnProcessor,
    TemporalTransformerBlock,
    VideoGroupNorm,
    VideoUNet,
    trainable_parameters,
)
from models.video.tuneavideo.tiny import tiny_video_unet

SIZE = 64


@pytest.fixture(autouse=True)
def no_env_model_dir(monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def pipe() -> tav.TuneAVideoPipeline:
    p = load_video_edit("tiny")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def fresh(pipe):
    """The module pipeline with its base weights back (tests below tune it)."""
    pipe.reset_tuning()
    return pipe


def video_frames(n: int, seed: int = 0) -> np.ndarray:
    """n smooth, distinct RGB frames (a moving gradient), uint8 (n, 64, 64, 3)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        phase = i / max(n, 1)
        r = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + phase))
        g = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - phase))
        b = np.full_like(xx, rng.uniform(0.2, 0.8))
        out.append(np.stack([r, g, b], -1))
    return (np.stack(out) * 255).round().astype(np.uint8)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------ sparse-causal


def sparse_attention(frames: int, seed: int = 0):
    """A bare attention layer (SD's attn1 shape: no q/k/v bias) with the sparse-causal processor."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        attn = Attention(query_dim=32, heads=4, dim_head=8)
    ctx = FrameContext()
    ctx.frames = frames
    attn.set_processor(SparseCausalAttnProcessor(ctx))
    return attn


def reference_sparse_causal(attn: Attention, x: torch.Tensor, i: int) -> torch.Tensor:
    """Frame i of the paper's sparse-causal attention, written out per head:
    softmax(Q_i [K_0; K_{i-1}]^T / sqrt(d)) [V_0; V_{i-1}], then the output projection.
    x: (F, N, C) one video."""
    j = max(i - 1, 0)
    q = attn.to_q(x[i])
    k = torch.cat([attn.to_k(x[0]), attn.to_k(x[j])])
    v = torch.cat([attn.to_v(x[0]), attn.to_v(x[j])])
    h = attn.heads
    d = q.shape[-1] // h
    q, k, v = (t.view(t.shape[0], h, d).transpose(0, 1) for t in (q, k, v))  # (h, tokens, d)
    w = torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1)
    out = (w @ v).transpose(0, 1).reshape(x.shape[1], h * d)
    return attn.to_out[0](out)


@torch.no_grad()
def test_frame0_of_sparse_causal_is_plain_self_attention():
    frames, b = 4, 2
    attn = sparse_attention(frames)
    x = torch.randn(b, frames, 16, 32)
    out = attn(x.flatten(0, 1)).unflatten(0, (b, frames))
    plain = copy.deepcopy(attn)
    plain.set_processor(AttnProcessor2_0())
    expected = plain(x[:, 0])  # self-attention of frame 0 alone, both videos
    torch.testing.assert_close(out[:, 0], expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_frame_i_sees_only_frames_0_and_i_minus_1_and_matches_reference():
    frames = 5
    attn = sparse_attention(frames, seed=1)
    x = torch.randn(frames, 16, 32)
    out = attn(x)
    for i in range(frames):
        torch.testing.assert_close(out[i], reference_sparse_causal(attn, x, i), atol=1e-5, rtol=1e-5)
        # Perturb every frame except 0, i-1 and i itself (frame i supplies the queries).
        others = [f for f in range(frames) if f not in (0, i - 1, i)]
        y = x.clone()
        y[others] += 3.0 * torch.randn(len(others), 16, 32)
        torch.testing.assert_close(attn(y)[i], out[i], atol=1e-6, rtol=0)
        if i >= 2:  # ...while frame i-1 does matter
            z = x.clone()
            z[i - 1] += 1.0
            assert (attn(z)[i] - out[i]).abs().max() > 1e-3


# ------------------------------------------------------------------------------ inflation


@torch.no_grad()
def test_fresh_inflated_unet_on_one_frame_equals_the_2d_unet():
    unet2d = tiny_video_unet(seed=0).eval()
    video = VideoUNet(tiny_video_unet(seed=0), seed=5).eval()
    x = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, 32)
    t = torch.tensor([10, 700])
    expected = unet2d(x, t, encoder_hidden_states=text).sample
    got = video(x[:, :, None], t, text)
    assert got.shape == (2, 4, 1, 8, 8)
    torch.testing.assert_close(got[:, :, 0], expected, atol=2e-5, rtol=1e-4)
    # F identical frames: keys [k0; k0], statistics of identical frames, temporal branch 0:
    # every frame is again the 2D output.
    got4 = video(x[:, :, None].expand(-1, -1, 4, -1, -1), t, text)
    for f in range(4):
        torch.testing.assert_close(got4[:, :, f], expected, atol=2e-5, rtol=1e-4)


def test_inflation_wraps_the_right_modules():
    video = VideoUNet(tiny_video_unet(seed=0))
    unet = video.unet
    resnet_norms = [m for n, m in unet.named_modules() if ".resnets." in n and n.endswith(("norm1", "norm2"))]
    assert resnet_norms and all(isinstance(m, VideoGroupNorm) for m in resnet_norms)
    assert isinstance(unet.conv_norm_out, VideoGroupNorm)
    # the transformer's input GroupNorm stays per frame (the original flattens (b f) first)
    transformer_norms = [m for n, m in unet.named_modules() if n.endswith("attentions.0.norm")]
    assert transformer_norms and all(type(m) is torch.nn.GroupNorm for m in transformer_norms)
    blocks = [m for m in unet.modules() if isinstance(m, TemporalTransformerBlock)]
    assert len(blocks) == 4  # tiny layout: 1 down + 1 mid + 2 up transformer blocks
    for blk in blocks:
        assert isinstance(blk.block.attn1.processor, SparseCausalAttnProcessor)
        assert not isinstance(blk.block.attn2.processor, SparseCausalAttnProcessor)
        out = blk.attn_temp.to_out[0]
        assert torch.count_nonzero(out.weight) == 0 and torch.count_nonzero(out.bias) == 0  # zero init, bias too
        assert isinstance(blk.norm_temp, torch.nn.LayerNorm)


def test_groupnorm_statistics_run_over_all_frames():
    torch.manual_seed(0)
    gn = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    ctx = FrameContext()
    ctx.frames = 2
    vgn = VideoGroupNorm(gn, ctx)
    b, f, c, h, w = 3, 2, 8, 5, 5
    x = torch.randn(b, f, c, h, w)
    x[:, 1] = 3.0 * x[:, 1] + 2.0  # frame 1 with other statistics than frame 0
    out = vgn(x.flatten(0, 1)).unflatten(0, (b, f))

    # The statistic, by hand: per video and group, mean and (biased) variance over
    # (channels of the group, both frames, H, W).
    g = x.view(b, f, 4, 2, h, w)
    mean = g.mean(dim=(1, 3, 4, 5), keepdim=True)
    var = g.var(dim=(1, 3, 4, 5), unbiased=False, keepdim=True)
    ref = ((g - mean) / torch.sqrt(var + 1e-6)).view(b, f, c, h, w) * gn.weight.view(c, 1, 1) + gn.bias.view(c, 1, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # ...which is what the original gets by handing nn.GroupNorm the 5D (b, c, f, h, w) tensor
    torch.testing.assert_close(out, gn(x.transpose(1, 2)).transpose(1, 2), atol=1e-6, rtol=1e-6)
    # and not per-frame normalisation: per frame, frame 1 (an affine copy) would normalise to
    # frame 0's output; over both frames it keeps its larger spread and offset.
    per_frame = gn(x.flatten(0, 1)).unflatten(0, (b, f))
    assert (out - per_frame).abs().max() > 0.5
    x_norm = (out - gn.bias.view(c, 1, 1)) / gn.weight.view(c, 1, 1)
    assert x_norm[:, 1].std() > 2 * x_norm[:, 0].std()


# ------------------------------------------------------------------------------ tuning


def test_tuning_trains_only_the_named_parameters_and_lowers_the_loss(fresh):
    pipe = fresh
    frames = video_frames(4)
    trainable = trainable_parameters(pipe.unet)
    names = set(trainable)
    # exactly: every attn1.to_q, attn2.to_q, and all of attn_temp (q, k, v, out weight + bias)
    blocks = [n for n, m in pipe.unet.named_modules() if isinstance(m, TemporalTransformerBlock)]
    expected = set()
    for blk in blocks:
        expected |= {f"{blk}.block.attn1.to_q.weight", f"{blk}.block.attn2.to_q.weight"}
        expected |= {f"{blk}.attn_temp.{p}" for p in ("to_q.weight", "to_k.weight", "to_v.weight",
                                                      "to_out.0.weight", "to_out.0.bias")}
    assert names == expected

    state = {f"{m}.{k}": v.clone() for m in ("unet", "vae", "text_encoder")
             for k, v in getattr(pipe, m).state_dict().items()}
    latents = pipe.encode_video(frames, torch.Generator().manual_seed(1))
    text = pipe.encode_prompt("a moving gradient")
    ts = torch.linspace(50, 950, 8).long()
    noise = torch.randn((8, *latents.shape), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = pipe.denoising_loss(latents, text, ts, noise).item()

    seen = []
    out = pipe.tune(frames, "a moving gradient", num_steps=5, learning_rate=1e-3,
                    generator=torch.Generator().manual_seed(0),
                    callback_on_step_end=lambda p, i, t, kw: seen.append((i, int(t), float(kw["loss"]))))
    assert out.steps == 5 and [s[0] for s in seen] == list(range(5))
    assert [s[2] for s in seen] == out.losses and all(0 <= s[1] < 1000 for s in seen)

    with torch.no_grad():
        after = pipe.denoising_loss(latents, text, ts, noise).item()
    assert after < before - 1e-3, (before, after)

    changed, unchanged = set(), set()
    for m in ("unet", "vae", "text_encoder"):
        for k, v in getattr(pipe, m).state_dict().items():
            (unchanged if torch.equal(v, state[f"{m}.{k}"]) else changed).add(f"{m}.{k}")
    assert changed == {f"unet.{n}" for n in names}  # every trained parameter moved, nothing else
    assert any("norm_temp" in k for k in unchanged)  # frozen as in the official code
    assert not pipe.unet.training and not any(p.requires_grad for p in pipe.unet.parameters())


def test_tuning_defaults_are_the_official_ones():
    sig = inspect.signature(tav.TuneAVideoPipeline.tune).parameters
    assert sig["num_steps"].default == 500
    assert sig["learning_rate"].default == 3e-5 and sig["weight_decay"].default == 1e-2
    assert sig["max_grad_norm"].default == 1.0
    assert inspect.signature(tav.TuneAVideoPipeline.invert).parameters["num_inference_steps"].default == 50
    edit = inspect.signature(tav.TuneAVideoPipeline.edit).parameters
    assert edit["num_inference_steps"].default == 50 and edit["guidance_scale"].default == 12.5


def test_tuning_cancels_within_one_step_and_restarts_from_base(fresh):
    pipe = fresh
    base = {n: p.clone() for n, p in trainable_parameters(pipe.unet).items()}

    class Cancel(Exception):
        pass

    def cancel_at_2(p, i, t, kw):
        if i == 2:
            raise Cancel

    with pytest.raises(Cancel):
        pipe.tune(video_frames(2), "x", num_steps=50, learning_rate=1e-3, callback_on_step_end=cancel_at_2)
    assert not pipe.unet.training and not any(p.requires_grad for p in pipe.unet.parameters())
    # a later tune starts again from the base weights: zero steps' worth = base
    pipe.reset_tuning()
    assert all(torch.equal(p, base[n]) for n, p in trainable_parameters(pipe.unet).items())


def test_gradient_checkpointing_trains_the_same(fresh):
    """Checkpointing (on by default on CUDA) recomputes every block in backward, through the
    frame-aware wrappers: the trained weights must not change."""
    pipe = fresh
    frames = video_frames(2)
    runs, active = [], []
    for ckpt in (False, True):
        pipe.tune(frames, "x", num_steps=2, learning_rate=1e-3, generator=torch.Generator().manual_seed(0),
                  gradient_checkpointing=ckpt, callback_on_step_end=lambda p, *a: active.append(p.unet.is_gradient_checkpointing))
        runs.append({n: p.clone() for n, p in trainable_parameters(pipe.unet).items()})
    assert active == [False, False, True, True] and not pipe.unet.is_gradient_checkpointing
    for n in runs[0]:
        torch.testing.assert_close(runs[1][n], runs[0][n], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------ DDIM inversion


def test_inversion_step_is_the_exact_inverse_of_the_ddim_step(pipe):
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(50)
    x = torch.randn(1, 4, 2, 8, 8)
    for t in sched.timesteps:
        eps = torch.randn_like(x)
        up = tav.ddim_inversion_step(eps, t, x, sched)
        torch.testing.assert_close(sched.step(eps, t, up, eta=0.0).prev_sample, x, atol=2e-6, rtol=1e-5)


def test_inversion_then_sampling_reconstructs_the_latents(fresh):
    """DDIM inversion assumes eps(x_t, t) ~ eps(x_{t-1}, t): the sampler at t sees the latent
    one level higher than the inversion did. A random UNet is no denoiser (its epsilon is
    a rough function of the latent), so it makes that gap arbitrary; what the pipeline owns is
    the pairing of timesteps, alphas at both ends, prompt, no CFG and frame order. With the
    real tiny UNet made latent-independent (conv_in zeroed: its epsilon then depends on t and
    the text only), inversion and sampling are exact inverses, so the only error left is
    float32 rounding: ~1e-7 relative per operation, amplified at most sqrt((1 - a)/a) ~ 15x
    at the top step, over 2 x 50 steps, i.e. well below the 1e-4 tolerance (measured ~2e-6).
    An off-by-one timestep, a wrong end alpha or a different prompt gives errors of O(1)."""
    pipe = fresh
    latents = pipe.encode_video(video_frames(2), torch.Generator().manual_seed(1))
    conv_in = pipe.unet.conv_in.weight
    saved = conv_in.detach().clone()
    try:
        with torch.no_grad():
            conv_in.zero_()
        inverted = pipe.invert(latents)  # 50 steps, "" prompt, no CFG
        assert rel_err(inverted, latents) > 0.5  # it did move: to the noise level of t = 981
        rec = pipe.edit("", inverted, guidance_scale=1.0, output_type="latent").videos[0]
        assert rel_err(rec, latents) < 1e-4
        off = pipe.edit("", inverted, num_inference_steps=49, guidance_scale=1.0, output_type="latent").videos[0]
        assert rel_err(off, latents) > 1e-2  # a mismatched schedule does not reconstruct
        other = pipe.edit("a different prompt", inverted, guidance_scale=1.0, output_type="latent").videos[0]
        assert rel_err(other, latents) > 1e-2
    finally:
        with torch.no_grad():
            conv_in.copy_(saved)


def test_inversion_error_with_a_real_denoiser_is_first_order_discretisation(pipe):
    """With a latent-dependent denoiser of the kind SD approximates, the exact MMSE epsilon of
    Gaussian data x0 ~ N(mu, var) (eps* = sqrt(1-a) (x - sqrt(a) mu) / (a var + 1 - a)), the
    round trip's error is the discretisation error of the probability-flow ODE that both
    DDIM directions integrate (first order): it halves when the steps double. Any bug in the
    pairing leaves an O(1) error that does not shrink."""
    latents = pipe.encode_video(video_frames(2), torch.Generator().manual_seed(1))
    ac = pipe.scheduler.alphas_cumprod
    mu, var = latents.mean(dim=(0, 2, 3, 4), keepdim=True), latents.var()

    class GaussianDenoiser:
        dtype = torch.float32

        def __call__(self, x, t, text):
            a = ac[int(t)]
            return (1 - a) ** 0.5 * (x - a**0.5 * mu) / (a * var + 1 - a)

    sub = copy.copy(pipe)  # shallow: shares every component, own `video_unet`
    object.__setattr__(sub, "video_unet", GaussianDenoiser())
    errs = []
    for n in (25, 50, 100):
        rec = sub.edit("", sub.invert(latents, n), num_inference_steps=n, guidance_scale=1.0,
                       output_type="latent").videos[0]
        errs.append(rel_err(rec, latents))
    assert 0.4 < errs[1] / errs[0] < 0.6 and 0.4 < errs[2] / errs[1] < 0.6, errs


# ------------------------------------------------------------------------------ artifact


def test_artifact_round_trip_gives_identical_outputs(fresh):
    pipe = fresh
    frames = video_frames(3)
    pipe.tune(frames, "a clip", num_steps=2, learning_rate=1e-3, generator=torch.Generator().manual_seed(0))
    art = pipe.export_tuned(clip={"frames": 3, "width": SIZE, "height": SIZE, "prompt": "a clip"})
    assert art.base_model == pipe.base_model_id == "tiny-sd-seed0"
    assert art.clip["prompt"] == "a clip" and art.meta["num_parameters"] > 0
    assert set(art.tensors()) == set(trainable_parameters(pipe.unet))  # trained parameters only

    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    text = pipe.encode_prompt("an edit")
    with torch.no_grad():
        expected = pipe.video_unet(x, 500, text)

    # a fresh pipeline whose temporal attentions start from another random init
    other = load_video_edit("tiny", inflate_seed=7)
    other.set_progress_bar_config(disable=True)
    with torch.no_grad():
        assert not torch.equal(other.video_unet(x, 500, text), expected)
    stored = TunedArtifact.from_parts(art.weights, art.meta_json())  # bytes + JSON, as stored
    other.load_tuned(stored)
    with torch.no_grad():
        assert torch.equal(other.video_unet(x, 500, text), expected)

    with pytest.raises(ArtifactMismatch, match="tuned on"):
        other.load_tuned(TunedArtifact(art.weights, {**art.meta, "base_model": "stable-diffusion-v1-5"}))
    with pytest.raises(ArtifactMismatch):
        TunedArtifact.from_parts(art.weights, {"format": "something else"})


# ------------------------------------------------------------------------------ editing


def test_edit_one_video_per_prompt_with_progress_and_cancel(fresh):
    pipe = fresh
    latents = pipe.encode_video(video_frames(3), torch.Generator().manual_seed(1))
    inverted = pipe.invert(latents, num_inference_steps=3)
    calls = []
    out = pipe.edit(["a red clip", "a blue clip"], inverted, num_inference_steps=3,
                    callback_on_step_end=lambda p, i, t, kw: calls.append((kw["prompt_index"], i)))
    assert out.prompts == ["a red clip", "a blue clip"]
    assert [v.shape for v in out.videos] == [(3, SIZE, SIZE, 3)] * 2 and all(v.dtype == np.uint8 for v in out.videos)
    assert not np.array_equal(out.videos[0], out.videos[1])
    assert calls == [(k, i) for k in range(2) for i in range(3)]

    def boom(p, i, t, kw):
        raise KeyboardInterrupt  # anything the worker raises propagates

    with pytest.raises(KeyboardInterrupt):
        pipe.edit(["x"], inverted, num_inference_steps=3, callback_on_step_end=boom)
    with pytest.raises(KeyboardInterrupt):
        pipe.invert(latents, num_inference_steps=3, callback_on_step_end=boom)

    # without latents: text-to-video with the tuned model, from seeded noise
    a = pipe.edit("x", None, num_inference_steps=2, num_frames=2, generator=torch.Generator().manual_seed(4))
    b = pipe.edit("x", None, num_inference_steps=2, num_frames=2, generator=torch.Generator().manual_seed(4))
    assert a.videos[0].shape == (2, SIZE, SIZE, 3) and np.array_equal(a.videos[0], b.videos[0])


def test_edit_guidance_uses_the_shared_cfg(fresh, monkeypatch):
    pipe = fresh
    inverted = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    scales = []
    real_cfg = tav.cfg
    monkeypatch.setattr(tav, "cfg", lambda u, c, s: scales.append(s) or real_cfg(u, c, s))
    pipe.edit("x", inverted, num_inference_steps=2, output_type="latent")
    assert scales == [12.5, 12.5]
    scales.clear()
    pipe.edit("x", inverted, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    assert scales == []
    # autoguidance: the guide's conditional epsilon in place of the unconditional one; a
    # guide equal to the model itself cancels out (any scale gives the plain prediction)
    a = pipe.edit("x", inverted, num_inference_steps=2, guidance_scale=1.0, output_type="latent").videos[0]
    b = pipe.edit("x", inverted, num_inference_steps=2, guidance_scale=3.0, guide_unet=pipe.video_unet,
                  output_type="latent").videos[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert scales == [3.0, 3.0]


# ------------------------------------------------------------------------------ registry


def test_registry_tiny_and_pretrained_round_trip(tmp_path, pipe):
    assert pipe.model_profile == "tiny" and pipe.config.default_frames == 8
    req = required_weights("video.edit")
    assert f"{TUNEAVIDEO_BASE_DIR}/unet/diffusion_pytorch_model.safetensors" in req
    with pytest.raises(WeightsMissing):
        load_video_edit("pretrained", tmp_path)
    # tiny components saved as an SD folder load through the pretrained path
    root = tmp_path / TUNEAVIDEO_BASE_DIR
    from models.video.tuneavideo.tiny import tiny_components

    for name, comp in tiny_components().items():
        comp.save_pretrained(root / name)
    loaded = load_video_edit("pretrained", tmp_path)
    assert loaded.model_profile == "pretrained" and loaded.base_model_id == TUNEAVIDEO_BASE_DIR
    assert loaded.config.default_frames == 24 and loaded.config.default_width == 512
    assert profiles.resolve_profile("auto", tmp_path, "video.edit") == "pretrained"
    pipe.reset_tuning()
    x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.video_unet(x, 100, loaded.encode_prompt("a")),
                                   pipe.video_unet(x, 100, pipe.encode_prompt("a")))
    shutil.rmtree(root)


# ------------------------------------------------------------------------------ clip decoding


def encode_mp4(frames: np.ndarray, fps: int = 24, codec: str = "libx264") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_sample_indices_follow_the_official_rule_by_default():
    # tuneavideo/data/dataset.py: list(range(sample_start_idx, len(vr), sample_frame_rate))[:n], rate 2, start 0
    assert sample_indices(100, 24) == list(range(0, 47, 2))  # 24 frames span 47: the paper's motion
    assert sample_indices(30, 4, 3, start_frame=5) == [5, 8, 11, 14]
    assert sample_indices(7, 4) == [0, 2, 4, 6] and sample_indices(7, 1) == [0]
    with pytest.raises(VideoLimitError, match=r"has 6 frames; 4 frames every 2 from frame 0 need 7"):
        sample_indices(6, 4)
    with pytest.raises(ValueError, match="frame_stride"):
        sample_indices(30, 4, 0)


def test_spread_sampling_covers_the_clip():
    assert sample_indices(30, 4, "spread") == [0, 10, 19, 29]
    assert sample_indices(24, 24, "spread") == list(range(24))
    assert sample_indices(30, 3, "spread", start_frame=10) == [10, 20, 29]
    with pytest.raises(VideoLimitError):
        sample_indices(3, 4, "spread")


def test_resize_center_crop_keeps_the_aspect():
    img = np.zeros((40, 120, 3), np.uint8)
    img[:, :40] = (255, 0, 0)  # left third red, middle green, right blue
    img[:, 40:80] = (0, 255, 0)
    img[:, 80:] = (0, 0, 255)
    out = np.asarray(resize_center_crop(Image.fromarray(img), 32, 32))
    assert out.shape == (32, 32, 3)
    assert out[:, 4:28, 1].min() > 200 and out[:, 4:28, 0].max() < 60  # only the middle survives


def test_read_clip_mp4_and_gif():
    n = 30
    levels = np.linspace(0, 240, n).round().astype(np.uint8)
    frames = np.repeat(levels[:, None, None, None], 48, 1).repeat(80, 2).repeat(3, 3)
    clip = read_clip(encode_mp4(frames), 4, 32, 32)  # the official rule: every 2nd frame from 0
    assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.indices == [0, 2, 4, 6] and clip.source_frames == n and clip.source_size == (80, 48)
    assert clip.source_fps == pytest.approx(24)
    got = clip.frames.reshape(4, -1).mean(1)
    assert np.abs(got - levels[clip.indices]).max() < 4  # lossy codec, flat gray frames
    assert clip.settings["frames"] == 4 and clip.settings["indices"] == [0, 2, 4, 6]
    assert clip.settings["frame_stride"] == 2 and clip.settings["start_frame"] == 0
    spread = read_clip(encode_mp4(frames), 4, 32, 32, frame_stride="spread")
    assert spread.indices == [0, 10, 19, 29] and spread.settings["frame_stride"] == "spread"
    assert np.abs(spread.frames.reshape(4, -1).mean(1) - levels[spread.indices]).max() < 4
    late = read_clip(encode_mp4(frames), 3, 32, 32, frame_stride=4, start_frame=10)
    assert late.indices == [10, 14, 18] and np.abs(late.frames.reshape(3, -1).mean(1) - levels[late.indices]).max() < 4

    gif = io.BytesIO()
    ims = [Image.fromarray(f) for f in frames[:10]]
    ims[0].save(gif, format="GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)
    g = read_clip(gif.getvalue(), 2, 16, 16, frame_stride="spread")
    assert g.indices == [0, 9] and g.frames.shape == (2, 16, 16, 3)
    assert abs(float(g.frames[1].mean()) - float(levels[9])) < 4


def test_read_clip_rejects_unreadable_empty_and_short_videos():
    with pytest.raises(VideoDecodeError):
        read_clip(b"", 2, 16, 16)
    with pytest.raises(VideoDecodeError):
        read_clip(b"this is not a video at all" * 100, 2, 16, 16)
    with pytest.raises(VideoDecodeError):
        read_clip(b"\x00" * 5000, 2, 16, 16)
    with pytest.raises(VideoLimitError):
        read_clip(encode_mp4(video_frames(3)), 8, 16, 16)



# ------------------------------------------------------------------------------ v-prediction (SD 2.x-768)


def v_pipeline() -> tav.TuneAVideoPipeline:
    from diffusers import DDIMScheduler

    from models.video.tuneavideo.tiny import tiny_components

    parts = tiny_components()
    parts["scheduler"] = DDIMScheduler.from_config(parts["scheduler"].config, prediction_type="v_prediction")
    p = tav.TuneAVideoPipeline(**parts, base_model_id="tiny-sd-v", default_frames=2, default_width=SIZE,
                               default_height=SIZE)
    p.set_progress_bar_config(disable=True)
    return p


def test_v_prediction_tunes_on_the_velocity():
    """train_tuneavideo.py: target = get_velocity(latents, noise, t) for v_prediction. The first
    step's loss (before its update) recomputed from the same draws."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = v_pipeline()
    frames = video_frames(2)
    out = pipe.tune(frames, "a clip", num_steps=1, learning_rate=1e-3, generator=torch.Generator().manual_seed(0))
    pipe.reset_tuning()
    g = torch.Generator().manual_seed(0)
    latents = pipe.sample_latents(pipe.encode_posterior(frames), g)
    noise = randn_tensor(latents.shape, generator=g, dtype=torch.float32)
    t = torch.randint(0, 1000, (1,), generator=g)
    with torch.no_grad():
        pred = pipe.video_unet(pipe.scheduler.add_noise(latents, noise, t), t, pipe.encode_prompt("a clip"))
    v = pipe.scheduler.get_velocity(latents, noise, t)
    assert out.losses[0] == pytest.approx(float(torch.nn.functional.mse_loss(pred, v)), rel=1e-5)
    assert out.losses[0] != pytest.approx(float(torch.nn.functional.mse_loss(pred, noise)), rel=1e-3)
    with torch.no_grad():
        assert float(pipe.denoising_loss(latents, pipe.encode_prompt("a clip"), t, noise[None])) == \
            pytest.approx(float(torch.nn.functional.mse_loss(pred, v)), rel=1e-5)


def test_v_prediction_inverts_and_samples_as_the_equivalent_epsilon_model(pipe):
    """The Gaussian-data MMSE denoiser of the epsilon test above, written as a v model
    (v = (eps - sqrt(1 - a) x) / sqrt(a)): inversion and sampling of the v pipeline must
    reconstruct exactly as the epsilon pipeline does (both integrate the same ODE), with the
    same first-order error. Reading v as epsilon (in inversion or sampling) leaves an O(1) error."""
    from diffusers import DDIMScheduler

    latents = pipe.encode_video(video_frames(2), torch.Generator().manual_seed(1))
    ac = pipe.scheduler.alphas_cumprod
    mu, var = latents.mean(dim=(0, 2, 3, 4), keepdim=True), latents.var()

    def eps_star(x, t):
        a = ac[int(t)]
        return (1 - a) ** 0.5 * (x - a**0.5 * mu) / (a * var + 1 - a)

    class Denoiser:
        dtype = torch.float32

        def __init__(self, v: bool):
            self.v = v

        def __call__(self, x, t, text):
            e = eps_star(x, t)
            a = ac[int(t)]
            return (e - (1 - a) ** 0.5 * x) / a**0.5 if self.v else e

    def round_trip(v: bool, n: int = 25):
        sub = copy.copy(pipe)
        object.__setattr__(sub, "video_unet", Denoiser(v))
        sched = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction" if v else "epsilon")
        object.__setattr__(sub, "scheduler", sched)
        rec = sub.edit("", sub.invert(latents, n), num_inference_steps=n, guidance_scale=1.0, output_type="latent")
        return rec.videos[0]

    eps_rec, v_rec = round_trip(False), round_trip(True)
    assert rel_err(v_rec, eps_rec) < 1e-4  # measured 5e-7: float rounding
    ratio = rel_err(round_trip(True, 50), latents) / rel_err(v_rec, latents)
    assert 0.4 < ratio < 0.6, ratio  # the discretisation error (0.32 at 25 steps) halves with the steps


def test_sample_prediction_models_are_refused():
    from diffusers import DDIMScheduler

    from models.video.tuneavideo.tiny import tiny_components

    parts = tiny_components()
    parts["scheduler"] = DDIMScheduler.from_config(parts["scheduler"].config, prediction_type="sample")
    with pytest.raises(ValueError, match=r"prediction_type.*'sample'.*epsilon and v_prediction"):
        tav.TuneAVideoPipeline(**parts)


# ------------------------------------------------------------------------------ torch.compile


def test_compile_runs_the_inflated_unet_and_tuning_still_works(monkeypatch):
    """VISIONJOBS_TORCH_COMPILE=video.edit: what is compiled is the inflated UNet that inversion
    and sampling run, and tune -> reset -> tune works with it on (the compiled `pipe.unet` of
    before never ran and broke reset_tuning on `_orig_mod.` names). Dynamo is disabled here so
    the real OptimizedModule runs eagerly (compiling even the tiny UNet takes a minute on a
    CPU); the GPU check compiles for real."""
    import torch._dynamo
    from torch._dynamo.eval_frame import OptimizedModule

    from models.acceleration import accelerate

    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    pipe = load_video_edit("tiny")
    pipe.set_progress_bar_config(disable=True)
    accelerate(pipe, "cpu", kind="video.edit", compile=True, force=True)
    assert "video_unet:compiled" in pipe.acceleration and "unet:compiled" not in pipe.acceleration
    assert isinstance(pipe.compiled_unet, OptimizedModule) and pipe.compiled_unet._orig_mod is pipe.video_unet
    calls = []
    pipe.compiled_unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    frames = video_frames(2)
    runs = []
    for _ in range(2):
        pipe.tune(frames, "x", num_steps=2, learning_rate=1e-3, generator=torch.Generator().manual_seed(0))
        runs.append({n: p.clone() for n, p in trainable_parameters(pipe.unet).items()})
        pipe.reset_tuning()
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])  # the second tune restarted from base
    assert calls == []  # tuning runs the eager module
    inverted = pipe.invert(pipe.encode_video(frames, torch.Generator().manual_seed(1)), num_inference_steps=2)
    pipe.edit("y", inverted, num_inference_steps=2, output_type="latent")
    assert calls == [1, 1, 2, 2]  # inversion (no CFG), then sampling ([negative, prompt] in one batch)
