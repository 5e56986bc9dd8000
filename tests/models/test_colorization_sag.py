"""Colour-overflow fixes and guidance arithmetic, as mechanics: streamlined SAG (which steps,
which formula, no re-noising, the attention mask), modulated deformable convolution (against
F.conv2d and hand-shifted convolutions), the content-guided deformable decoder, and the
CFG / autoguidance formulas. Tiny profile, a few DDIM steps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from models.colorization.deformable import ContentGuidedVAE, DeformableConv2d, modulated_deform_conv2d
from models.colorization.lab import l_channel
from models.colorization.sag import (
    ExplicitAttnProcessor,
    MidBlockAttention,
    gaussian_blur_2d,
    predicted_x0,
    sag_attention_mask,
    sag_degrade,
)
from models.colorization.tiny import tiny_vae
from models.guidance import GuidanceConfig, autoguidance, cfg


def run(pipe, image, seed=0, steps=3, **kw):
    return pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


class Recorder:
    """Records (input sample, output eps) of every forward of a UNet."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        self.calls.append((sample.detach().clone(), output[0].detach().clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def passes_per_step(pipe, photo, steps, unet=None, **kw):
    """UNet forwards in each denoising step, counted between step callbacks."""
    seen, marks = [], []
    handle = (unet or pipe.unet).register_forward_pre_hook(lambda m, a, k: seen.append(1), with_kwargs=True)
    try:
        out = run(pipe, photo, steps=steps, callback_on_step_end=lambda p, i, t, d: marks.append((int(t), len(seen))), **kw)
    finally:
        handle.remove()
    counts = [b - a for (_, a), (_, b) in zip([(None, 0)] + marks[:-1], marks)]
    return [t for t, _ in marks], counts, out


# ---------------------------------------------------------------- SAG: where it runs


def test_sag_runs_exactly_at_steps_above_the_threshold(pipe, photo):
    ts, counts, out = passes_per_step(pipe, photo, 20)
    assert ts == list(range(951, 0, -50))
    # the official DDIM timesteps 951..601 are > 600: 8 of 20 steps get one extra guided pass
    assert counts == [2 if t > 600 else 1 for t in ts] and sum(c == 2 for c in counts) == 8
    assert out.sag_steps == 8 and out.passes_per_image == 2 * (20 + 8)  # CFG: 2 items per pass
    _, counts, out = passes_per_step(pipe, photo, 20, sag_threshold=300)
    assert counts == [2 if t > 300 else 1 for t in ts] and out.sag_steps == 14  # 951..301
    _, counts, out = passes_per_step(pipe, photo, 20, sag_scale=0.0)
    assert counts == [1] * 20 and out.sag_steps == 0 and out.passes_per_image == 40
    _, counts, _ = passes_per_step(pipe, photo, 5, sag_threshold=1000)
    assert counts == [1] * 5


def test_sag_with_autoguidance_repeats_both_pairs(pipe, photo):
    g = {"mode": "autoguidance", "scale": 2.0}
    ts, main, out = passes_per_step(pipe, photo, 4, guidance=g)
    _, guide, _ = passes_per_step(pipe, photo, 4, unet=pipe.guide_unet, guidance=g)
    assert ts == [751, 501, 251, 1]
    assert main == [2, 1, 1, 1] and guide == [2, 1, 1, 1]
    assert out.passes_per_image == 2 * (4 + 1)


# ---------------------------------------------------------------- SAG: what it computes


def test_sag_formula_degraded_x0_without_renoising(pipe, photo):
    n, s = 2, 0.05
    latents = []
    with Recorder(pipe.unet) as rec:
        run(pipe, photo, steps=3, num_images=n, sag_scale=s,
            callback_on_step_end=lambda p, i, t, d: latents.append(d["latents"].clone()))
    assert len(rec.calls) == 4  # step 0 (t = 667): main + degraded; steps 1, 2: main only
    (in1, out1), (in2, out2) = rec.calls[0], rec.calls[1]
    assert in1.shape[0] == in2.shape[0] == 2 * n  # both passes are full CFG batches
    x_t = in1[:n, :4]
    eps = cfg(out1[:n], out1[n:], 7.0)  # the guided estimate
    x0 = predicted_x0(x_t, eps, pipe.scheduler.alphas_cumprod[667])
    degraded = in2[:n, :4]
    assert torch.equal(in2[:n, :4], in2[n:, :4])  # the same degraded latent in both CFG halves
    # fed as is: every value is x0 (outside the mask) or blur(x0) (inside), never re-noised
    blurred = gaussian_blur_2d(x0)
    inside, outside = torch.isclose(degraded, blurred, atol=1e-5), torch.isclose(degraded, x0, atol=1e-5)
    assert (inside | outside).all() and inside.any() and outside.any()
    assert not torch.allclose(degraded, x_t, atol=1e-2)
    # the mask is spatial: the same for all latent channels
    per_pixel = (inside & ~outside).any(1)
    assert torch.equal((inside & ~outside).all(1) | ~per_pixel, torch.ones_like(per_pixel))
    # eps += s (eps - eps_degraded), both CFG-guided; then the plain DDIM step
    eps_sag = eps + s * (eps - cfg(out2[:n], out2[n:], 7.0))
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(3)
    expected = sched.step(eps_sag, 667, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(latents[0], expected, atol=1e-5, rtol=1e-5)


def test_sag_changes_the_result_only_when_on(pipe, photo):
    a = np.asarray(run(pipe, photo, steps=3).images[0])
    b = np.asarray(run(pipe, photo, steps=3, sag_scale=0.0).images[0])
    c = np.asarray(run(pipe, photo, steps=3, sag_threshold=700).images[0])  # 667 < 700: no SAG step
    assert not np.array_equal(a, b) and np.array_equal(b, c)


def test_sag_mask_averages_all_heads_sums_queries():
    heads, tokens = 8, 4  # a 2 x 2 mid-block map
    probs = torch.full((2, heads, tokens, tokens), 1.0 / tokens)  # uniform: every key gets exactly 1
    probs[0, 4:] = 0.0
    probs[0, 4:, :, 0] = 1.0  # heads 4-7 of item 0 attend only to key 0
    probs[1, :, :, 3] += 0.05  # item 1: key 3 slightly favoured by all heads
    probs[1, :, :, :3] -= 0.05 / 3
    m = sag_attention_mask(probs.reshape(2 * heads, tokens, tokens), heads, (2, 2), (4, 4))
    assert m.shape == (2, 1, 4, 4)
    # item 0: all heads averaged, key 0 gets (4 * 1 + 4 * 4) / 8 = 2.5 > 1; the others 0.5.
    # (the official heads 0-3 only would see uniform attention and mask nothing)
    expected0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    expected1 = torch.tensor([[0.0, 0.0], [0.0, 1.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(m[0, 0], expected0) and torch.equal(m[1, 0], expected1)
    with pytest.raises(ValueError, match="heads"):
        sag_attention_mask(probs.reshape(2 * heads, tokens, tokens), 3, (2, 2), (4, 4))


def test_explicit_processor_matches_default_attention_and_is_restored(pipe):
    attn = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    before = type(attn.processor)
    x = torch.randn(2, 9, 8, 16)
    t, text = torch.tensor(500), torch.randn(2, 77, 32)
    with torch.no_grad():
        ref = pipe.unet(x, t, encoder_hidden_states=text).sample
        with MidBlockAttention(pipe.unet) as mba, mba.capturing():
            out = pipe.unet(x, t, encoder_hidden_states=text).sample
            assert isinstance(attn.processor, ExplicitAttnProcessor)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert type(attn.processor) is before
    probs = mba.processor.probs
    assert mba.map_size == (4, 8) and probs.shape == (2 * attn.heads, 32, 32)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2 * attn.heads, 32))  # rows are softmaxes
    assert mba.mask(slice(0, 1), (8, 16)).shape == (1, 1, 8, 16)


def test_gaussian_blur_is_opencvs_kernel_9_sigma_1():
    x = torch.randn(2, 4, 12, 10)
    ours = gaussian_blur_2d(x)
    ref = np.stack([np.stack([cv2.GaussianBlur(c.numpy(), (9, 9), 1.0, borderType=cv2.BORDER_REFLECT_101)
                              for c in item]) for item in x])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    mask = torch.zeros(2, 1, 12, 10)
    mask[..., :5] = 1
    d = sag_degrade(x, mask)
    assert torch.equal(d[..., 5:], x[..., 5:]) and torch.allclose(d[..., :5], ours[..., :5])


# ---------------------------------------------------------------- deformable convolution


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 2)])
def test_deform_conv_zero_offsets_unit_modulation_is_conv2d(batch, stride, padding, dilation):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 5, 9, 11, generator=g)
    w, b = torch.randn(6, 5, 3, 3, generator=g), torch.randn(6, generator=g)
    ref = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    ho, wo = ref.shape[-2:]
    out = modulated_deform_conv2d(x, torch.zeros(batch, 18, ho, wo), torch.ones(batch, 9, ho, wo), w, b,
                                  stride, padding, dilation)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(modulated_deform_conv2d(x, torch.zeros(batch, 18, ho, wo), None, w, b, stride,
                                                       padding, dilation), ref, atol=1e-5, rtol=1e-5)


def test_deform_conv_offsets_shift_and_interpolate_per_item():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 10, generator=g)
    w, b = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    off = torch.zeros(2, 18, 8, 10)
    off[0, 0::2] = 1.0  # item 0: every tap samples one row further down (dy = +1)
    off[1, 1::2] = 0.5  # item 1: half a column to the right (bilinear)
    mask = torch.ones(2, 9, 8, 10)
    mask[1] = 0.5  # item 1: modulation halves every tap
    out = modulated_deform_conv2d(x, off, mask, w, b, padding=1)
    # dy = +1: tap (i, j) of output (y, x) reads the zero-padded input at row y + i, i.e. an
    # unpadded conv over the input padded 0 rows on top and 2 below (1 on each side)
    shifted = F.pad(x[0:1], (1, 1, 0, 2))
    torch.testing.assert_close(out[0:1], F.conv2d(shifted, w, b), atol=1e-5, rtol=1e-5)
    # dx = +0.5: each tap reads the mean of two neighbouring columns of the zero-padded input
    p = F.pad(x[1:2], (1, 2, 1, 1))
    between = 0.5 * (p[..., :-1] + p[..., 1:])
    torch.testing.assert_close(out[1:2], 0.5 * F.conv2d(between, w, None) + b.view(1, 4, 1, 1),
                               atol=1e-5, rtol=1e-5)
    # the batch is computed item by item exactly as single items
    solo = modulated_deform_conv2d(x[1:2], off[1:2], mask[1:2], w, b, padding=1)
    torch.testing.assert_close(out[1:2], solo, atol=1e-6, rtol=1e-6)


def test_deformable_conv_module_official_split():
    torch.manual_seed(0)
    dcn = DeformableConv2d(6, guide_channels=4)
    x, guide = torch.randn(2, 6, 5, 7), torch.randn(2, 4, 5, 7)
    # official init: zero offset predictor -> zero offsets, modulation sigmoid(0) = 0.5
    expected = 0.5 * F.conv2d(x, dcn.weight, None, padding=1) + dcn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(dcn(x, guide), expected, atol=1e-5, rtol=1e-5)
    # chunk(3): channels 0-8 and 9-17 are the offsets (cat(o1, o2)), 18-26 the modulation logits
    with torch.no_grad():
        dcn.conv_offset.bias[18:] = 100.0  # modulation -> 1
    torch.testing.assert_close(dcn(x, guide), F.conv2d(x, dcn.weight, dcn.bias, padding=1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        dcn.conv_offset.bias[:18] = 0.3  # the first two chunks are the offsets: now non-zero
    assert not torch.allclose(dcn(x, guide), F.conv2d(x, dcn.weight, dcn.bias, padding=1))
    with torch.no_grad():  # the guide moves the offsets through conv_offset's last 4 input channels
        dcn.conv_offset.weight[:18, 6:] = 0.2
    assert not torch.allclose(dcn(x, guide), dcn(x, torch.zeros_like(guide)))
    assert set(dict(dcn.named_parameters())) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}


def test_content_guided_decoder_reduces_to_the_vae_without_deformation():
    vae = tiny_vae(2)
    model = ContentGuidedVAE.from_vae(vae)
    with torch.no_grad():
        for dcn in (model.dcn_in, *model.dcn_mid):
            dcn.weight.zero_()
            dcn.bias.zero_()
        z, guide = torch.randn(3, 4, 8, 16), torch.randn(1, 4, 8, 16)
        torch.testing.assert_close(model.decode(z, guide), vae.decode(z).sample, atol=1e-4, rtol=1e-4)
    assert model.dcn_in.channels == vae.config.block_out_channels[-1] and len(model.dcn_mid) == 4


def test_deformable_decoder_in_the_pipeline(pipe, photo):
    guides = []
    enc = pipe.deformable_vae.vae.encoder.register_forward_pre_hook(lambda m, a: guides.append(a[0].clone()))
    try:
        plain = run(pipe, photo, num_images=2)
        deform = run(pipe, photo, num_images=2, deformable_decoder=True)
    finally:
        enc.remove()
    # the guide: the working-size L image in [0, 1] through the deformable VAE's own encoder
    assert len(guides) == 1 and guides[0].shape == (1, 3, 64, 128)
    assert 0 <= guides[0].min() and guides[0].max() <= 1 and torch.equal(guides[0][0, 0], guides[0][0, 1])
    for a, b in zip(plain.images, deform.images):
        assert not np.array_equal(np.asarray(a), np.asarray(b))
        assert np.abs(l_channel(b).astype(int) - l_channel(photo).astype(int)).mean() <= 2
    again = run(pipe, photo, num_images=2, deformable_decoder=True)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(deform.images, again.images))


# ---------------------------------------------------------------- guidance arithmetic


def test_autoguidance_formula_and_unit_weight():
    g = torch.Generator().manual_seed(0)
    guide, main = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    torch.testing.assert_close(autoguidance(guide, main, 1.0), main, atol=1e-6, rtol=0)
    w = 2.5
    ref = torch.from_numpy(guide.numpy() + w * (main.numpy() - guide.numpy()))  # computed apart
    torch.testing.assert_close(autoguidance(guide, main, w), ref)
    assert torch.equal(autoguidance(guide, main, 0.0), guide)
    with pytest.raises(ValueError, match="shape"):
        autoguidance(guide, main[:1], 2.0)


def test_guidance_config():
    assert GuidanceConfig.parse(None) == GuidanceConfig("cfg", 7.0)
    assert GuidanceConfig.parse(3) == GuidanceConfig("cfg", 3.0)
    assert GuidanceConfig.parse({"mode": "autoguidance"}).scale == 2.0
    assert GuidanceConfig.parse({"mode": "none", "scale": 5}).needs_second_pass is False
    assert GuidanceConfig("cfg", 1.0).needs_second_pass is False and GuidanceConfig("cfg", 7).needs_second_pass
    a, b = torch.randn(3), torch.randn(3)
    assert torch.equal(GuidanceConfig("cfg", 7.0).combine(a, b), cfg(b, a, 7.0))
    assert torch.equal(GuidanceConfig("autoguidance", 2.0).combine(a, b), autoguidance(b, a, 2.0))
    assert torch.equal(GuidanceConfig("none", 9.0).combine(a, None), a)
    assert GuidanceConfig("autoguidance", 2).as_dict() == {"mode": "autoguidance", "scale": 2.0}
    for bad, match in [({"mode": "magic"}, "guidance.mode"), ({"mode": "cfg", "scale": -1}, "guidance.scale"),
                       ({"mode": "cfg", "scale": float("nan")}, "guidance.scale"), ({"weight": 2}, "unknown"),
                       ("cfg", "`guidance`"), (True, "`guidance`")]:
        with pytest.raises(ValueError, match=match):
            GuidanceConfig.parse(bad)
