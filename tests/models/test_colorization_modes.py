"""Every Control Color mode and their combinations through the pipeline (tiny profile):
the output keeps the input's L, seeds reproduce, outputs run as one batch, progress and
cancel per step, exemplar tokens, autoguidance against a reference computation, and the
errors a request for a missing feature gets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from models.colorization.exemplar import CLIP_MEAN, CLIP_STD, encode_exemplar, preprocess_exemplar
from models.colorization.lab import l_channel, prepare_input
from models.colorization.pipeline import ControlColorPipeline
from models.colorization.strokes import build_stroke_hint
from models.colorization.tiny import tiny_components
from models.guidance import GuidanceConfig, autoguidance


@pytest.fixture(scope="module")
def gray() -> Image.Image:
    return Image.fromarray(skimage.data.camera()).resize((61, 90), Image.LANCZOS)  # portrait, mode L


@pytest.fixture(scope="module")
def exemplar() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())


def stroke_canvas(size) -> Image.Image:
    canvas = np.zeros((size[1], size[0], 4), np.uint8)
    canvas[5:20, 5:30] = (30, 200, 60, 255)
    return Image.fromarray(canvas, "RGBA")


STROKES = [{"color": "#e02020", "width": 6, "points": [[8, 8], [40, 25], [55, 10]]},
           {"color": "#2040ff", "width": 10, "points": [[30, 35]]}]
GUIDANCE = {"cfg": {"mode": "cfg", "scale": 7.0}, "autoguidance": {"mode": "autoguidance", "scale": 2.0},
            "none": {"mode": "none", "scale": 1.0}}
INPUTS = ("prompt", "strokes", "stroke_image", "exemplar")


def run(pipe, image, seed=0, steps=3, **kw):
    return pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


def request(which, image, exemplar_image):
    kw = {}
    if "prompt" in which:
        kw["prompt"] = "a red car"
    if "strokes" in which:
        kw["strokes"] = STROKES
    if "stroke_image" in which:
        kw["stroke_image"] = stroke_canvas(image.size)
    if "exemplar" in which:
        kw["exemplar"] = exemplar_image
    return kw


def mean_l_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(l_channel(a).astype(np.int16) - l_channel(b).astype(np.int16)).mean())


# ---------------------------------------------------------------- L is kept, for every combination

COMBOS = [c for r in range(len(INPUTS) + 1) for c in itertools.combinations(INPUTS, r)]


@pytest.mark.parametrize("mode", list(GUIDANCE))
@pytest.mark.parametrize("which", COMBOS, ids=lambda c: "+".join(c) or "unconditional")
def test_every_combination_keeps_l(pipe, photo, exemplar, mode, which):
    # 3 steps: t = 667 runs SAG (default on), so SAG is in every combination
    out = run(pipe, photo, guidance=GUIDANCE[mode], **request(which, photo, exemplar))
    assert out.images[0].size == photo.size and out.sag_steps == 1 and out.guidance == GUIDANCE[mode]
    assert mean_l_diff(out.images[0], photo) <= 2


@pytest.mark.parametrize("mode", list(GUIDANCE))
def test_all_inputs_deformable_gray_batch_keeps_l(pipe, gray, exemplar, mode):
    out = run(pipe, gray, guidance=GUIDANCE[mode], num_images=2, deformable_decoder=True,
              **request(INPUTS, gray, exemplar))
    assert len(out.images) == 2
    for img in out.images:
        assert img.size == gray.size and mean_l_diff(img, gray) <= 2


# ---------------------------------------------------------------- seeds and batches


@pytest.mark.parametrize("mode", list(GUIDANCE))
def test_seeds_reproduce_and_differ_per_mode(pipe, photo, exemplar, mode):
    kw = dict(guidance=GUIDANCE[mode], **request(("strokes", "exemplar"), photo, exemplar))
    a = np.asarray(run(pipe, photo, seed=11, **kw).images[0])
    b = np.asarray(run(pipe, photo, seed=11, **kw).images[0])
    c = np.asarray(run(pipe, photo, seed=12, **kw).images[0])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("mode, main_batch, guide_batch", [("cfg", 8, 0), ("autoguidance", 4, 4), ("none", 4, 0)])
def test_four_outputs_run_as_one_batch(pipe, photo, mode, main_batch, guide_batch):
    main, guide = [], []
    hm = pipe.unet.register_forward_pre_hook(lambda m, a, k: main.append((a[0] if a else k["sample"]).shape[0]),
                                             with_kwargs=True)
    hg = pipe.guide_unet.register_forward_pre_hook(lambda m, a, k: guide.append((a[0] if a else k["sample"]).shape[0]),
                                                   with_kwargs=True)
    try:
        out = run(pipe, photo, steps=2, num_images=4, guidance=GUIDANCE[mode], strokes=STROKES)
    finally:
        hm.remove()
        hg.remove()
    assert len(out.images) == 4 and main == [main_batch] * 2
    assert guide == ([guide_batch] * 2 if guide_batch else [])
    arrays = [np.asarray(i) for i in out.images]
    assert all(not np.array_equal(arrays[0], x) for x in arrays[1:])  # one batch, different noise


# ---------------------------------------------------------------- progress and cancel


@pytest.mark.parametrize("mode", list(GUIDANCE))
def test_progress_every_step_and_cancel_within_one(pipe, photo, mode):
    steps = []
    run(pipe, photo, steps=5, guidance=GUIDANCE[mode], callback_on_step_end=lambda p, i, t, d: steps.append(i))
    assert steps == [0, 1, 2, 3, 4]

    class Canceled(Exception):
        pass

    def cancel_at_2(p, i, t, d):
        if i == 2:
            raise Canceled
        return d

    calls = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        with pytest.raises(Canceled):
            run(pipe, photo, steps=5, guidance=GUIDANCE[mode], callback_on_step_end=cancel_at_2)
    finally:
        h.remove()
    # steps 0-2 ran (t = 801 and 601 with SAG), nothing after the raise
    assert len(calls) == 3 + 2


# ---------------------------------------------------------------- autoguidance


def _inputs(pipe, photo, n=2):
    prepared = prepare_input(photo, pipe.config.short_side, pipe.config.max_long_side)
    text = pipe.encode_prompt("a red car", "cpu", n)
    mask, masked = build_stroke_hint(prepared, STROKES).to_tensors()
    return pipe.prepare_model_inputs(prepared, text, mask, masked, torch.Generator().manual_seed(0))


def test_autoguidance_against_reference(pipe, photo):
    cond = _inputs(pipe, photo)
    x = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(501)
    with torch.no_grad():
        main = pipe.predict_noise(x, t, cond)
        guide = pipe.predict_noise(x, t, cond, unet=pipe.guide_unet, controlnet=pipe.guide_controlnet)
        assert not torch.allclose(main, guide)
        w = 2.5
        got = pipe.guided_noise(x, t, GuidanceConfig("autoguidance", w), cond)
        torch.testing.assert_close(got, guide + w * (main - guide), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, autoguidance(guide, main, w))
        # w = 1: the main model's conditional prediction (and the guide is not even run)
        calls = []
        h = pipe.guide_unet.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
        try:
            one = pipe.guided_noise(x, t, GuidanceConfig("autoguidance", 1.0), cond)
        finally:
            h.remove()
        assert torch.equal(one, main) and calls == []
        # `none` is the conditional prediction too; CFG differs (it sees the negative prompt)
        assert torch.equal(pipe.guided_noise(x, t, GuidanceConfig("none"), cond), main)


def test_autoguidance_end_to_end_differs_from_cfg(pipe, photo):
    a = np.asarray(run(pipe, photo, guidance=GUIDANCE["autoguidance"]).images[0])
    b = np.asarray(run(pipe, photo, guidance=GUIDANCE["cfg"]).images[0])
    c = np.asarray(run(pipe, photo, guidance={"mode": "autoguidance", "scale": 1.0}).images[0])
    d = np.asarray(run(pipe, photo, guidance=GUIDANCE["none"]).images[0])
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(c, d)  # w = 1 is the main model alone, same as `none`


# ---------------------------------------------------------------- exemplar


def test_exemplar_token_is_appended_to_both_branches(pipe, photo, exemplar):
    texts = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a, k: texts.append(k["encoder_hidden_states"].clone()),
                                            with_kwargs=True)
    try:
        run(pipe, photo, steps=1, num_images=2, exemplar=exemplar)
        run(pipe, photo, steps=1, num_images=2)
    finally:
        h.remove()
    with_ex, without = texts[0], texts[1]
    assert with_ex.shape == (4, 78, 32) and without.shape == (4, 77, 32)
    token = encode_exemplar(pipe.image_encoder, exemplar)[0, 0]
    for row in with_ex:  # [uncond x 2, cond x 2]: the same exemplar token in every row
        torch.testing.assert_close(row[77], token)
    torch.testing.assert_close(with_ex[:, :77], without)  # the 77 text tokens are unchanged
    with torch.no_grad():
        pooled = pipe.image_encoder(pixel_values=preprocess_exemplar(exemplar, 32)).pooler_output[0]
    torch.testing.assert_close(token, pooled)


def test_exemplar_drives_the_output(pipe, photo, exemplar):
    a = np.asarray(run(pipe, photo).images[0])
    b = np.asarray(run(pipe, photo, exemplar=exemplar).images[0])
    c = np.asarray(run(pipe, photo, exemplar=exemplar.transpose(Image.FLIP_TOP_BOTTOM).rotate(90)).images[0])
    assert not np.array_equal(a, b) and not np.array_equal(b, c)


def test_exemplar_preprocessing_is_clips():
    x = preprocess_exemplar(Image.new("RGB", (300, 200), (128, 64, 32)), 224)
    assert x.shape == (1, 3, 224, 224)
    expected = (np.array([128, 64, 32]) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(x[0, :, 100, 100].numpy(), expected, atol=1e-5)
    # shorter side to the size, centre crop: a left/right split stays a left/right split
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 150:] = 255
    y = preprocess_exemplar(Image.fromarray(img), 32)
    assert y[0, 0, 16, 4] < 0 < y[0, 0, 16, 28]


# ---------------------------------------------------------------- strokes reach the UNet


def test_stroke_mask_and_masked_latent_reach_the_unet(pipe, photo):
    seen = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append((a[0] if a else k["sample"]).clone()),
                                            with_kwargs=True)
    try:
        run(pipe, photo, seed=5, steps=1, strokes=STROKES, sag_scale=0.0)
    finally:
        h.remove()
    x = seen[0]
    prepared = prepare_input(photo, 64, 192)
    mask, masked = build_stroke_hint(prepared, STROKES).to_tensors()
    latent_mask = torch.nn.functional.interpolate(mask, size=(8, 16), mode="nearest")
    assert (latent_mask == 0).any() and torch.equal(x[:, 4:5], latent_mask.expand(2, -1, -1, -1))
    # the masked-hint latent: VAE sample of the masked hint x 0.18215, drawn right after the noise
    g = torch.Generator().manual_seed(5)
    torch.randn((1, 4, 8, 16), generator=g)
    with torch.no_grad():
        expected = pipe.vae.encode(masked).latent_dist.sample(g) * 0.18215
    torch.testing.assert_close(x[:1, 5:], expected)


# ---------------------------------------------------------------- refusals


def test_missing_optional_features_are_named():
    bare = ControlColorPipeline(**tiny_components(optional=False), short_side=64, max_long_side=192)
    bare.set_progress_bar_config(disable=True)
    assert not (bare.supports_exemplar or bare.supports_deformable_decoder or bare.supports_autoguidance)
    img = Image.new("RGB", (40, 30), (90, 90, 90))
    with pytest.raises(ValueError, match=r"`exemplar`.*controlcolor/image_encoder/config\.json.*VISIONJOBS_MODEL_DIR"):
        bare(img, num_inference_steps=1, exemplar=img)
    with pytest.raises(ValueError, match=r"`deformable_decoder`.*controlcolor/deformable_vae/config\.json"):
        bare(img, num_inference_steps=1, deformable_decoder=True)
    with pytest.raises(ValueError, match=r"autoguidance.*unet/config\.json"):
        bare(img, num_inference_steps=1, guidance={"mode": "autoguidance", "scale": 2})
    bare.missing_optional = {"exemplar": ["/models/controlcolor/image_encoder/config.json"]}
    with pytest.raises(ValueError, match="/models/controlcolor/image_encoder/config.json"):
        bare(img, num_inference_steps=1, exemplar=img)
    assert bare(img, num_inference_steps=1).images[0].size == (40, 30)  # everything else works


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(guidance={"mode": "best"}), "guidance.mode"),
        (dict(guidance={"mode": "cfg", "scale": -2}), "guidance.scale"),
        (dict(guidance={"mode": "cfg"}, guidance_scale=3.0), "`guidance_scale`, not both"),
        (dict(strokes=[{"color": "blue", "points": [[1, 1]]}]), r"`strokes`: strokes\[0\]\.color"),
        (dict(strokes=[{"color": "#0000ff", "points": []}]), r"strokes\[0\]\.points"),
        (dict(stroke_image=np.zeros((4, 4, 4))), "`stroke_image`"),
        (dict(exemplar="cat.png"), "`exemplar`"),
        (dict(sag_scale=-0.1), "`sag_scale`"),
        (dict(sag_threshold=float("nan")), "`sag_threshold`"),
        (dict(deformable_decoder="yes"), "`deformable_decoder`"),
        (dict(strokes=STROKES, mask=torch.ones(1, 1, 64, 128), masked_hint=torch.zeros(1, 3, 64, 128)), "not both"),
    ],
)
def test_check_inputs_names_the_argument(pipe, photo, kwargs, name):
    calls = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        with pytest.raises(ValueError, match=name):
            pipe(photo, num_inference_steps=1, **kwargs)
    finally:
        h.remove()
    assert calls == []  # rejected before any model work


def test_points_outside_the_image_do_not_fail_the_model(pipe, photo):
    out = run(pipe, photo, steps=1, strokes=[{"color": "#ff0000", "width": 5, "points": [[-10, -10], [500, 300]]}])
    assert mean_l_diff(out.images[0], photo) <= 2


def test_bench_script_reports_passes(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "colorize.py"
    spec = importlib.util.spec_from_file_location("bench_colorize", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    report = bench.main(["--steps", "3", "--repeats", "1", "--out", str(out)])
    assert out.is_file() and report["profile"] == "tiny" and report["device"] == "cpu"
    passes = {r["case"]: r["passes_per_image"] for r in report["results"]}
    # 3 steps (667, 334, 1): SAG at 667 only. CFG: 2 per step + 2; autoguidance: main + guide
    assert passes == {"cfg, SAG on, batch 1": 8, "cfg, SAG off, batch 1": 6, "cfg, SAG on, batch 4": 8,
                      "cfg, SAG off, batch 4": 6, "autoguidance, SAG on, batch 1": 8,
                      "cfg, SAG on, deformable decoder, batch 1": 8}
    # the input has no prompt: every call captions it, timed next to the denoising loop
    assert all(r["caption"] and 0 < r["caption_seconds"] and 0 < r["denoise_seconds"] < r["seconds_per_call"]
               for r in report["results"])
    torch.set_num_threads(1)
