"""Control Color against the official code: the demo's BLIP caption for empty prompts, the
guidance defaults, and the parity switches (each changes exactly what it names). Tiny profile,
1-3 DDIM steps (one 31-step run for the 'uniform' schedule)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.colorization.caption import GENERATE_KWARGS, caption_input, strip_black_and_white
from models.colorization.lab import (
    is_gray_scale_official, l_channel, official_working_size, prepare_input, replace_l, resize, working_size,
)
from models.colorization.parity import Parity, uniform_timesteps
from models.colorization.pipeline import ADDED_PROMPT, ControlColorPipeline
from models.colorization.sag import MidBlockAttention, sag_attention_mask
from models.colorization.tiny import TINY_MAX_LONG_SIDE, TINY_SHORT_SIDE, tiny_components


def run(pipe, image, seed=0, steps=2, **kw):
    return pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


class Spy:
    """Records the keyword arguments of every call of `obj.name` (and still calls it)."""

    def __init__(self, monkeypatch, obj, name):
        self.calls, real = [], getattr(obj, name)
        monkeypatch.setattr(obj, name, lambda *a, **kw: self.calls.append(kw) or real(*a, **kw))


def unet_inputs(pipe, fn):
    seen = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append((a[0] if a else k["sample"]).clone()),
                                            with_kwargs=True)
    try:
        out = fn()
    finally:
        h.remove()
    return seen, out


def images(out):
    return [np.asarray(im) for im in out.images]


# ---------------------------------------------------------------- guidance


def test_negative_prompt_is_refused_where_it_has_no_effect(pipe, photo):
    for mode in ("autoguidance", "none"):
        with pytest.raises(ValueError, match=r"`negative_prompt` has no effect with `guidance.mode`"):
            run(pipe, photo, steps=1, guidance={"mode": mode}, negative_prompt="dull")
    out = run(pipe, photo, steps=1, guidance={"mode": "autoguidance"})
    assert out.guidance == {"mode": "autoguidance", "scale": 2.0}  # the mode's default, not CFG's 7
    assert out.negative_prompt is None  # no unconditional pass ran
    assert run(pipe, photo, steps=1, negative_prompt="dull").negative_prompt == "dull"


# ---------------------------------------------------------------- caption


def test_black_and_white_prefix_is_cut_as_the_official_demo():
    assert strip_black_and_white("a black and white photo of a man on a horse") == "a man on a horse"
    assert strip_black_and_white("black and white photograph of a busy street") == "a busy street"
    assert strip_black_and_white("a man riding a horse") == "a man riding a horse"
    # character for character: the official cuts up to the first "of", wherever it is
    assert strip_black_and_white("a pair of shoes in a black and white photo of a shop") == \
        "shoes in a black and white photo of a shop"


def test_empty_prompt_gets_the_blip_caption_of_the_l_image(pipe, photo, monkeypatch):
    gen = Spy(monkeypatch, pipe.caption_model, "generate")
    texts = []
    h = pipe.text_encoder.register_forward_pre_hook(lambda m, a: texts.append(a[0].clone()))
    try:
        out = run(pipe, photo, steps=1)
    finally:
        h.remove()
    assert len(gen.calls) == 1 and out.caption
    kw = gen.calls[0]
    assert {k: kw[k] for k in GENERATE_KWARGS} == dict(num_beams=3, max_length=30, min_length=10,
                                                      repetition_penalty=1.0, do_sample=False)
    # the official demo captions the L channel replicated to RGB, at the input's resolution
    expected = pipe.caption_processor(images=[caption_input(l_channel(photo))], return_tensors="pt").pixel_values
    assert torch.equal(kw["pixel_values"], expected)
    assert not torch.equal(kw["pixel_values"], pipe.caption_processor(images=[photo], return_tensors="pt").pixel_values)
    assert pipe.caption_processor.tokenizer.decode(kw["input_ids"][0], skip_special_tokens=True) == "a picture of"
    assert out.prompt == f"{out.caption}, {ADDED_PROMPT}"
    ids = pipe.tokenizer([out.prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(texts[0], ids)


def test_auto_caption_off_and_given_prompts_are_not_captioned(pipe, photo, monkeypatch):
    gen = Spy(monkeypatch, pipe.caption_model, "generate")
    off = run(pipe, photo, steps=1, auto_caption=False)
    assert off.caption is None and off.prompt == "best quality, detailed, real"  # no leading comma
    given = run(pipe, photo, steps=1, prompt="a red car")
    assert given.caption is None and given.prompt == "a red car, best quality, detailed, real"
    assert gen.calls == []


def test_captions_of_a_batch_run_as_one_generate(pipe, photo, monkeypatch):
    gen = Spy(monkeypatch, pipe.caption_model, "generate")
    gray = photo.convert("L")
    outs = pipe.run_batch([dict(image=photo, generator=torch.Generator().manual_seed(0)),
                           dict(image=photo, prompt="a red car", generator=torch.Generator().manual_seed(1)),
                           dict(image=gray, generator=torch.Generator().manual_seed(2))], num_inference_steps=1)
    assert len(gen.calls) == 1 and gen.calls[0]["pixel_values"].shape[0] == 2
    lone = run(pipe, photo, steps=1)
    assert outs[0].caption == lone.caption and outs[1].caption is None and outs[2].caption
    assert all(o.timings["caption"] >= 0 and o.timings["denoise"] > 0 for o in outs)


def test_a_pipeline_without_captioner_names_it():
    parts = {k: v for k, v in tiny_components(optional=False).items() if not k.startswith("caption")}
    bare = ControlColorPipeline(**parts, short_side=TINY_SHORT_SIDE, max_long_side=TINY_MAX_LONG_SIDE)
    bare.set_progress_bar_config(disable=True)
    img = Image.new("RGB", (64, 64), (90, 90, 90))
    assert run(bare, img, steps=1).caption is None  # auto_caption None: on only when loaded
    with pytest.raises(ValueError, match=r"`auto_caption`.*blip-image-captioning-base/config\.json"):
        run(bare, img, steps=1, auto_caption=True)


# ---------------------------------------------------------------- parity: SAG heads


def test_official_sag_heads_read_heads_0_to_3_and_mix_items():
    heads, tokens = 8, 4  # a 2 x 2 mid-block map
    probs = torch.full((2, heads, tokens, tokens), 1.0 / tokens)  # uniform: every key gets exactly 1
    probs[0, 4:] = 0.0
    probs[0, 4:, :, 0] = 1.0  # item 0: heads 4-7 attend to key 0 only
    probs[1, :4] = 0.0
    probs[1, :4, :, 3] = 1.0  # item 1: heads 0-3 attend to key 3 only
    flat = probs.reshape(2 * heads, tokens, tokens)
    key = lambda k: F.one_hot(torch.tensor(k), 4).float().reshape(1, 2, 2)
    ours = sag_attention_mask(flat, heads, (2, 2), (2, 2))
    assert torch.equal(ours[0], key(0)) and torch.equal(ours[1], key(3))  # (4 x 1 + 4 x 4) / 8 = 2.5 > 1
    official = sag_attention_mask(flat, heads, (2, 2), (2, 2), "official")
    # chunk(2) keeps rows 0-7 (item 0), read as 2 x 4 heads: item 0 <- its heads 0-3 (uniform:
    # nothing), item 1 <- item 0's heads 4-7 (key 0), not its own map
    assert official[0].sum() == 0 and torch.equal(official[1], key(0))
    one = sag_attention_mask(flat[:heads], heads, (2, 2), (2, 2), "official")  # a lone image: heads 0-3
    assert torch.equal(one, (flat[:4].mean(0).sum(0) > 1).float().reshape(1, 1, 2, 2))


def test_sag_heads_switch_changes_only_the_sag_mask(pipe, photo, monkeypatch):
    masks = []
    real_mask = MidBlockAttention.mask

    def spy(self, items, size, rule="all"):
        m = real_mask(self, items, size, rule)
        masks.append((self.processor.probs.clone(), self.processor.heads, self.map_size, m))
        return m

    monkeypatch.setattr(MidBlockAttention, "mask", spy)
    seen_ours, ours = unet_inputs(pipe, lambda: run(pipe, photo, steps=3, prompt="x"))
    seen_off, off = unet_inputs(pipe, lambda: run(pipe, photo, steps=3, prompt="x", parity={"sag_heads": "official"}))
    probs, heads, size, mask = masks[1]
    # the unconditional item is the first of the [uncond, cond] batch: its heads 0-3
    ref = (probs[:4].mean(0).sum(0) > 1).float().reshape(1, 1, *size)
    assert torch.equal(mask, F.interpolate(ref, size=(8, 16), mode="nearest"))
    assert not torch.equal(masks[0][3], mask)
    assert torch.equal(seen_ours[0], seen_off[0])  # the step's main pass: identical
    assert not torch.equal(seen_ours[1], seen_off[1])  # its degraded pass: another mask
    assert off.parity["sag_heads"] == "official" and not np.array_equal(images(ours)[0], images(off)[0])
    no_sag = [images(run(pipe, photo, steps=3, prompt="x", sag_scale=0.0, parity={"sag_heads": r}))[0]
              for r in ("all", "official")]
    assert np.array_equal(*no_sag)


def test_official_sag_heads_do_not_mix_requests_of_a_batch(pipe, photo, monkeypatch):
    masks = []
    real_mask = MidBlockAttention.mask
    monkeypatch.setattr(MidBlockAttention, "mask", lambda self, *a: masks.append(real_mask(self, *a)) or masks[-1])
    par = {"sag_heads": "official"}
    reqs = [dict(image=photo, prompt="x", num_images=2, generator=torch.Generator().manual_seed(3)),
            dict(image=photo, prompt="y", num_images=1, generator=torch.Generator().manual_seed(4))]
    batched = pipe.run_batch(copy.deepcopy(reqs), num_inference_steps=3, parity=par)
    batch_masks = list(masks)
    assert [m.shape[0] for m in batch_masks] == [2, 1]  # one mask per request, each from its own items
    for k, (r, b) in enumerate(zip(reqs, batched)):
        masks.clear()
        lone = pipe.run_batch([r], num_inference_steps=3, parity=par)[0]
        assert torch.equal(masks[0], batch_masks[k])
        for x, y in zip(images(lone), images(b)):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 2  # float rounding only


# ---------------------------------------------------------------- parity: working size


@pytest.mark.parametrize("size, official, ours", [
    ((1000, 500), (768, 512), (1024, 512)),  # 1024 >= 800 -> 768: squeezed
    ((500, 1000), (512, 768), (512, 1024)),
    ((4000, 500), (768, 512), (1536, 192)),
    ((1200, 800), (768, 512), (768, 512)),  # 768 < 800: the rules agree
    ((512, 512), (512, 512), (512, 512)),
])
def test_official_working_size_rule(size, official, ours):
    assert official_working_size(*size, 512) == working_size(*size, 512, 1536, "official") == official
    assert working_size(*size, 512, 1536) == ours


def test_official_working_size_interpolates_by_the_short_side_scale():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (500, 1000, 3), dtype=np.uint8))
    l3 = np.repeat(l_channel(image)[:, :, None], 3, axis=2)
    off = prepare_input(image, 512, 1536, "official")
    assert off.working_size == (768, 512)
    # k = 512 / 500 > 1: Lanczos (official), though 768 x 512 has fewer pixels than the input
    assert np.array_equal(off.hint, resize(l3, (768, 512), upscale=True).astype(np.float32) / 255)
    assert not np.array_equal(off.hint, resize(l3, (768, 512)).astype(np.float32) / 255)


def test_working_size_switch_changes_only_the_size(pipe, photo):
    wide = Image.fromarray(np.tile(np.asarray(photo.resize((100, 45))), (1, 10, 1))[:, :1000])  # 1000 x 45
    ours = run(pipe, wide, steps=1, prompt="x", sag_scale=0.0)
    off = run(pipe, wide, steps=1, prompt="x", sag_scale=0.0, parity={"working_size": "official"})
    assert ours.working_size == (192, 64) and off.working_size == (768, 64)  # 14 x 64 = 896 >= 800 -> 768
    assert off.images[0].size == ours.images[0].size == (1000, 45)
    # where the rules agree (70 x 45 -> 128 x 64 under both), the images are bit-identical
    same = [images(run(pipe, photo, steps=2, prompt="x", parity={"working_size": r}))[0] for r in ("aspect", "official")]
    assert np.array_equal(*same)


# ---------------------------------------------------------------- parity: timesteps


def test_uniform_timesteps_are_ldms_and_30_steps_run_31(pipe):
    assert uniform_timesteps(30) == list(range(991, 0, -33)) and len(uniform_timesteps(30)) == 31
    assert pipe.timesteps_for(30) == list(range(958, 0, -33))  # diffusers 'leading': 30 steps
    assert pipe.timesteps_for(30, "official") == uniform_timesteps(30)
    for steps in (20, 50, 8):  # divisors of 1000: the schedules agree
        assert pipe.timesteps_for(steps) == pipe.timesteps_for(steps, {"timesteps": "uniform"})


def test_uniform_schedule_steps_as_ldm_ddim(pipe):
    """Each DDIM step under 'uniform' is ldm's p_sample_ddim at eta 0: a_t = alphas_cumprod[t],
    a_prev = alphas_cumprod[t - 33] (alphas_cumprod[0] after t = 1, make_ddim_sampling_parameters)."""
    sched = copy.deepcopy(pipe.scheduler)
    sub = copy.copy(pipe)
    object.__setattr__(sub, "scheduler", sched)
    ts = sub.set_timesteps(30, Parity(timesteps="uniform"), "cpu").tolist()
    ac = sched.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    for t in ts:
        x, eps = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        a_t, a_prev = ac[t], ac[t - 33] if t > 1 else ac[0]
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        torch.testing.assert_close(sched.step(eps.float(), t, x.float(), eta=0.0).prev_sample.double(), expected,
                                   atol=2e-5, rtol=1e-5)


def test_timesteps_switch_changes_only_the_schedule(pipe, photo):
    seen = []
    out = run(pipe, photo, steps=30, prompt="x", sag_scale=0.0, parity={"timesteps": "uniform"},
              callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)))
    assert seen == uniform_timesteps(30) and out.denoising_steps == 31
    same = [images(run(pipe, photo, steps=2, prompt="x", parity={"timesteps": r}))[0] for r in ("leading", "uniform")]
    assert np.array_equal(*same)  # 2 divides 1000: the same steps, the same pixels


# ---------------------------------------------------------------- parity: gray inputs and the L merge


def test_gray_input_switch_uses_gray_values_as_l_for_gray_inputs_only(pipe, photo, monkeypatch):
    rng = np.random.default_rng(1)
    gray = np.asarray(photo.convert("L")).astype(np.int16)[..., None].repeat(3, 2)
    gray = np.clip(gray + rng.integers(-1, 2, gray.shape), 0, 255).astype(np.uint8)  # R ~ G ~ B: gray to test.py
    tinted, colour = Image.fromarray(gray), photo
    assert is_gray_scale_official(gray) and not is_gray_scale_official(np.asarray(colour))
    lab, off = prepare_input(tinted, 64, 192), prepare_input(tinted, 64, 192, gray_input="official")
    assert np.array_equal(lab.l_original, l_channel(tinted)) and np.array_equal(off.l_original, gray[..., 0])
    assert np.array_equal(off.l3_original, gray) and not np.array_equal(lab.l_original, off.l_original)
    # the caption sees the official input_image: the gray RGB itself
    gen = Spy(monkeypatch, pipe.caption_model, "generate")
    out = run(pipe, tinted, steps=1, parity={"gray_input": "official"})
    assert torch.equal(gen.calls[0]["pixel_values"], pipe.caption_processor(images=[tinted], return_tensors="pt").pixel_values)
    assert np.abs(l_channel(out.images[0]).astype(int) - gray[..., 0]).mean() <= 2  # channel 0 merged back as L
    same = [images(run(pipe, colour, steps=1, prompt="x", parity={"gray_input": r}))[0] for r in ("lab", "official")]
    assert np.array_equal(*same)  # a colour input: nothing changes


def test_l_merge_switch_is_the_plain_opencv_merge(pipe, photo, monkeypatch):
    decoded = []
    real_decode = pipe.decode_latents
    monkeypatch.setattr(pipe, "decode_latents", lambda z, g=None: decoded.append(real_decode(z, g)) or decoded[-1])
    fit = run(pipe, photo, steps=2, prompt="x")
    plain = run(pipe, photo, steps=2, prompt="x", parity={"l_merge": "official"})
    assert np.array_equal(decoded[0], decoded[1])  # the same model output; only the merge differs
    assert np.array_equal(images(plain)[0], replace_l(decoded[1][0], l_channel(photo), gamut_fit=False))
    assert np.array_equal(images(fit)[0], replace_l(decoded[0][0], l_channel(photo)))
    assert not np.array_equal(images(fit)[0], images(plain)[0])


def test_parity_presets_and_errors(pipe, photo):
    assert Parity.parse("official") == Parity("official", "official", "uniform", "official", "official") == Parity.official()
    assert Parity.parse(None) == Parity.parse("project") == Parity() and Parity.parse({"timesteps": "uniform"}).sag_heads == "all"
    out = run(pipe, photo, steps=1, prompt="x", parity="official")
    assert out.parity == {"sag_heads": "official", "working_size": "official", "timesteps": "uniform",
                          "gray_input": "official", "l_merge": "official"}
    for bad, name in (({"sag_heads": "some"}, "parity.sag_heads"), ({"colour": 1}, "parity"), (3, "parity")):
        with pytest.raises(ValueError, match=f"`{name}"):
            run(pipe, photo, steps=1, prompt="x", parity=bad)


def test_the_api_contract_mirrors_the_models_defaults_and_switches():
    """service/ may not import torch, so it spells these out; they must stay equal."""
    import typing

    from models.colorization import parity as P
    from models.guidance import DEFAULT_GUIDANCE_SCALES
    from service.schemas import colorization as api

    assert api.DEFAULT_GUIDANCE_SCALES == DEFAULT_GUIDANCE_SCALES
    fields = api.ColorizationParity.model_fields
    assert set(fields) == set(P._CHOICES)
    for name, choices in P._CHOICES.items():
        assert typing.get_args(fields[name].annotation) == choices and fields[name].default == choices[0]
    assert {k: v.model_dump() for k, v in api.PARITY_PRESETS.items()} == \
        {"project": P.Parity().as_dict(), "official": P.Parity.official().as_dict()}


def test_models_fetch_downloads_what_the_captioner_requires():
    """`visionjobs models fetch --kind colorize` brings the BLIP folder the pretrained profile reads."""
    from fnmatch import fnmatch

    from models.colorization.weights_layout import CAPTION_DIR, CAPTION_REQUIRED, COLORIZE_REQUIRED
    from models.fetch import MANIFEST

    blip = [d for d in MANIFEST["colorize"] if d.repo_id == "Salesforce/blip-image-captioning-base"]
    assert len(blip) == 1 and blip[0].folder == CAPTION_DIR
    for alternatives in CAPTION_REQUIRED:
        assert alternatives in COLORIZE_REQUIRED
        assert any(fnmatch(a.split("/", 1)[1], p) for a in alternatives for p in blip[0].patterns), alternatives
