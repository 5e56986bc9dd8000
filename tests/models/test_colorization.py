"""Control Color pipeline on the tiny profile: real properties, not smoke.

Every pipeline call here runs at short side 64 (8x8 latents) with 2-3 DDIM steps where the
step count does not matter, so the whole file stays well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from models.colorization.lab import l_channel, prepare_input, replace_l, working_size
from models.colorization.pipeline import DEFAULT_NEGATIVE_PROMPT, PROMPT_SUFFIX
from models.guidance import cfg
from models.media import encode_image, load_image


def run(pipe, image, seed=0, steps=2, **kw):
    return pipe(image, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


def mean_l_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(l_channel(a).astype(np.int16) - l_channel(b).astype(np.int16)).mean())


class UNetSpy:
    """Counts UNet forwards and records each call's input batch."""

    def __init__(self, pipe):
        self.samples = []
        self.handle = pipe.unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.samples.append((args[0] if args else kwargs["sample"]).detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    "size, short, cap, expected",
    [
        ((70, 45), 64, 192, (128, 64)),  # 99.6 rounds to 128
        ((45, 70), 64, 192, (64, 128)),  # portrait mirrors landscape
        ((1000, 500), 512, 1536, (1024, 512)),
        ((512, 512), 512, 1536, (512, 512)),
        ((4000, 500), 512, 1536, (1536, 192)),  # capped: aspect kept, not squeezed to 768
        ((1200, 800), 512, 1536, (768, 512)),  # 768.0 exactly
        ((3000, 2000), 512, 700, (640, 448)),  # cap rounds down to a multiple of 64
    ],
)
def test_working_size(size, short, cap, expected):
    assert working_size(*size, short, cap) == expected


@pytest.mark.parametrize("w", [33, 70, 257, 640, 1001, 3000])
@pytest.mark.parametrize("h", [45, 299, 512, 2049])
def test_working_size_properties(w, h):
    short, cap = 512, 1536
    W, H = working_size(w, h, short, cap)
    assert W % 64 == 0 and H % 64 == 0 and max(W, H) <= cap and min(W, H) >= 64
    # aspect ratio kept up to the rounding of each side to 64 (<= 32 px per side)
    k0 = short / min(w, h)
    k = k0 * min(1.0, cap / (max(w, h) * k0))
    assert abs(W - w * k) <= 32 + 1e-6 or W == 64
    assert abs(H - h * k) <= 32 + 1e-6 or H == 64


def test_prepare_input_hint_is_opencv_l(photo):
    p = prepare_input(photo, 64, 192)
    assert p.working_size == (128, 64) and p.original_size == (70, 45)
    assert p.hint.shape == (64, 128, 3) and p.hint.dtype == np.float32
    assert 0.0 <= p.hint.min() and p.hint.max() <= 1.0
    assert np.array_equal(p.hint[..., 0], p.hint[..., 1]) and np.array_equal(p.hint[..., 0], p.hint[..., 2])
    np.testing.assert_allclose(p.hint[..., 0], p.l_working / 255.0)
    # L at the original size is OpenCV's 8-bit Lab L of the RGB input
    lab = cv2.cvtColor(np.asarray(photo), cv2.COLOR_RGB2LAB)
    assert np.array_equal(p.l_original, lab[..., 0])
    # the working L is the original L resized with Lanczos (upscaling): same overall level
    assert abs(p.l_working.mean() - lab[..., 0].mean()) < 3


def test_grayscale_goes_through_lab():
    # The official code uses the gray value itself as L for R=G=B inputs; OpenCV L of a gray
    # level differs (L = 255/100 * L*), and we must use the latter.
    gray = Image.fromarray(np.full((40, 60), 100, np.uint8), mode="L")
    p = prepare_input(gray, 64, 192)
    expected_l = cv2.cvtColor(np.full((1, 1, 3), 100, np.uint8), cv2.COLOR_RGB2LAB)[0, 0, 0]
    assert expected_l != 100
    assert np.all(p.l_original == expected_l)


def test_replace_l_keeps_l_and_size_on_saturated_output(photo):
    rng = np.random.default_rng(0)
    wild = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)  # out-of-gamut when paired with photo L
    out = replace_l(wild, photo)
    assert out.shape == (45, 70, 3) and out.dtype == np.uint8
    err = np.abs(cv2.cvtColor(out, cv2.COLOR_RGB2LAB)[..., 0].astype(int) - l_channel(photo).astype(int))
    assert err.max() <= 1
    # the plain official merge loses L to RGB clipping on such colours: why gamut_fit exists
    plain = replace_l(wild, photo, gamut_fit=False)
    plain_err = np.abs(cv2.cvtColor(plain, cv2.COLOR_RGB2LAB)[..., 0].astype(int) - l_channel(photo).astype(int))
    assert plain_err.mean() > err.mean()
    # in-gamut pixels are untouched by the fit
    untouched = plain_err <= 1
    assert np.array_equal(out[untouched], plain[untouched])


# ---------------------------------------------------------------- guidance


def test_cfg_matches_hand_computation():
    u = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    c = torch.tensor([[2.0, 0.0], [0.5, -1.0]])
    expected = torch.tensor([[1.0 + 7 * 1.0, -2.0 + 7 * 2.0], [0.5, 3.0 + 7 * -4.0]])
    assert torch.equal(cfg(u, c, 7.0), expected)
    assert torch.equal(cfg(u, c, 1.0), c) and torch.equal(cfg(u, c, 0.0), u)
    with pytest.raises(ValueError, match="shape"):
        cfg(u, c[:1], 7.0)


# ---------------------------------------------------------------- pipeline


def test_output_keeps_input_size_and_l_rgb(pipe, photo):
    out = run(pipe, photo, steps=3)
    img = out.images[0]
    assert img.size == (70, 45) and img.mode == "RGB"
    assert out.working_size == (128, 64) and out.original_size == (70, 45)
    assert mean_l_diff(img, photo) <= 2
    # it is colour, not the gray input copied through
    assert np.asarray(img).astype(int).std(axis=2).mean() > 1


def test_output_keeps_l_grayscale(pipe):
    gray = Image.fromarray(skimage.data.camera()).resize((90, 61), Image.LANCZOS)
    assert gray.mode == "L"
    out = run(pipe, gray, steps=3)
    assert out.images[0].size == (90, 61)
    assert mean_l_diff(out.images[0], gray) <= 2


def test_seeds_reproduce_and_differ(pipe, photo):
    a = np.asarray(run(pipe, photo, seed=7).images[0])
    b = np.asarray(run(pipe, photo, seed=7).images[0])
    c = np.asarray(run(pipe, photo, seed=8).images[0])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert run(pipe, photo, seed=7).seed == 7


def test_num_images_is_one_cfg_batch_per_step(pipe, photo):
    with UNetSpy(pipe) as spy:
        out = run(pipe, photo, steps=2, num_images=4)
    assert len(out.images) == 4 and all(im.size == (70, 45) for im in out.images)
    assert [s.shape[0] for s in spy.samples] == [8, 8]  # 2 x 4 for CFG, one forward per step
    x = spy.samples[0]
    assert x.shape[1:] == (9, 8, 16)  # latent 4 + mask 1 + masked-hint latent 4 at 64x128 / 8
    assert torch.all(x[:, 4] == 1)  # no strokes: generate everywhere
    # masked-hint latent: the VAE latent of the zero image, shared by every item, not noise
    assert torch.equal(x[:, 5:], x[:1, 5:].expand_as(x[:, 5:]))
    assert torch.equal(x[:4, :4], x[4:, :4])  # uncond and cond halves see the same latents
    # the batch items get different noise, so the images differ
    assert not np.array_equal(np.asarray(out.images[0]), np.asarray(out.images[1]))


def test_guidance_scale_one_skips_uncond_pass(pipe, photo):
    with UNetSpy(pipe) as spy:
        run(pipe, photo, steps=2, num_images=2, guidance_scale=1.0)
    assert [s.shape[0] for s in spy.samples] == [2, 2]


def test_controlnet_sees_latents_and_pixel_hint(pipe, photo):
    seen = []
    h = pipe.controlnet.register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0] if a else k["sample"], k["controlnet_cond"])), with_kwargs=True
    )
    try:
        run(pipe, photo, steps=1, num_images=1)
    finally:
        h.remove()
    sample, hint = seen[0]
    assert sample.shape == (2, 4, 8, 16) and hint.shape == (2, 3, 64, 128)
    expected = torch.from_numpy(prepare_input(photo, 64, 192).hint).permute(2, 0, 1)
    assert torch.allclose(hint[0], expected) and torch.allclose(hint[1], expected)


def test_hint_drives_the_output(pipe, photo, monkeypatch):
    """Same seed and prompt, L flipped: the model's decoded output differs because the
    ControlNet sees L. Compared before the input's L is put back: replace_l changes a/b by
    itself (an identical model output gives different a/b for different L), so a comparison
    after it could never fail. The control run feeds the ControlNet a constant hint: then the
    decoded outputs are identical, i.e. this assertion fails when the hint is ignored."""
    decoded = []
    real_decode = pipe.decode_latents
    monkeypatch.setattr(pipe, "decode_latents", lambda z, g=None: decoded.append(real_decode(z, g)) or decoded[-1])
    flipped = photo.transpose(Image.FLIP_LEFT_RIGHT)

    def model_outputs():
        decoded.clear()
        run(pipe, photo, prompt="a photo")
        run(pipe, flipped, prompt="a photo")
        return decoded[0], decoded[1]

    a, b = model_outputs()
    assert a.shape == b.shape == (1, 64, 128, 3) and not np.array_equal(a, b)
    blank = pipe.controlnet.register_forward_pre_hook(
        lambda m, args, kw: (args, {**kw, "controlnet_cond": torch.zeros_like(kw["controlnet_cond"])}), with_kwargs=True)
    try:
        a0, b0 = model_outputs()
    finally:
        blank.remove()
    assert np.array_equal(a0, b0)  # hint ignored: nothing else differs between the two inputs
    # ...yet after L replacement their a/b differ: what the old comparison measured
    ab = lambda x, src: cv2.cvtColor(replace_l(x[0], src), cv2.COLOR_RGB2LAB)[..., 1:]
    assert not np.array_equal(ab(a0, photo), ab(b0, flipped))


def test_prompts(pipe, photo):
    seen = []
    h = pipe.text_encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        out = run(pipe, photo, steps=1, prompt="a red car")
        custom = run(pipe, photo, steps=1, prompt="a red car", negative_prompt="blurry")
    finally:
        h.remove()
    assert out.prompt == "a red car" + PROMPT_SUFFIX == "a red car, best quality, detailed, real"
    assert out.negative_prompt == DEFAULT_NEGATIVE_PROMPT and custom.negative_prompt == "blurry"
    tok = pipe.tokenizer
    ids = lambda s: tok([s], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(seen[0], ids("a red car, best quality, detailed, real"))
    assert torch.equal(seen[1], ids(DEFAULT_NEGATIVE_PROMPT)) and seen[1].shape == (1, 77)
    assert torch.equal(seen[3], ids("blurry"))


def test_callback_every_step_in_order(pipe, photo):
    calls = []

    def cb(p, i, t, kw):
        assert p is pipe and kw["latents"].shape == (1, 4, 8, 16)
        calls.append((i, int(t)))
        return kw

    run(pipe, photo, steps=3, callback_on_step_end=cb)
    assert [i for i, _ in calls] == [0, 1, 2]
    assert [t for _, t in calls] == [667, 334, 1]  # DDIM 'leading' + steps_offset 1
    assert [t for t in pipe.scheduler.timesteps.tolist()] == [667, 334, 1]


def test_callback_exception_stops_the_loop(pipe, photo):
    class Canceled(Exception):
        pass

    def cb(p, i, t, kw):
        if i == 1:
            raise Canceled()
        return kw

    with UNetSpy(pipe) as spy, pytest.raises(Canceled):
        run(pipe, photo, steps=10, callback_on_step_end=cb, sag_scale=0.0)
    assert len(spy.samples) == 2  # steps 0 and 1 ran; nothing after the raise
    # with SAG (default on) steps 0 and 1 (t = 901, 801 > 600) each add their degraded pass
    # inside the step; still nothing after the raise
    with UNetSpy(pipe) as spy, pytest.raises(Canceled):
        run(pipe, photo, steps=10, callback_on_step_end=cb)
    assert len(spy.samples) == 4


def test_twenty_steps_timesteps_match_official_ddim(pipe):
    pipe.scheduler.set_timesteps(20)
    assert pipe.scheduler.timesteps.tolist() == list(range(951, 0, -50))
    # SAG (a later issue) runs where t > 600: 951, 901, ..., 601 = the first 8 of 20 steps
    # (ldm's 'uniform' DDIM timesteps are range(0, 1000, 50) + 1, so 601 is included)
    assert sum(t > 600 for t in pipe.scheduler.timesteps.tolist()) == 8


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(image=np.zeros((8, 8, 3), np.uint8)), "`image`"),
        (dict(prompt=None), "`prompt`"),
        (dict(negative_prompt=3), "`negative_prompt`"),
        (dict(num_inference_steps=0), "`num_inference_steps`"),
        (dict(guidance_scale=-1.0), "`guidance_scale`"),
        (dict(num_images=0), "`num_images`"),
        (dict(eta=2.0), "`eta`"),
        (dict(generator=123), "`generator`"),
        (dict(mask=torch.ones(1, 1, 64, 128)), "`masked_hint`"),
        (dict(mask=torch.ones(1, 1, 64, 64), masked_hint=torch.zeros(1, 3, 64, 128)), "`mask`"),
        (dict(mask=torch.ones(1, 1, 64, 128), masked_hint=torch.full((1, 3, 64, 128), 2.0)), "`masked_hint`"),
        (dict(callback_on_step_end="no"), "`callback_on_step_end`"),
    ],
)
def test_check_inputs_names_the_argument(pipe, photo, kwargs, name):
    call = dict(image=photo, num_inference_steps=1) | kwargs
    with UNetSpy(pipe) as spy, pytest.raises(ValueError, match=name):
        pipe(**call)
    assert spy.samples == []  # rejected before any model work


def test_explicit_mask_and_masked_hint_reach_the_unet(pipe, photo):
    # the stroke path (later issue) feeds these; here: mask zeros on the left half
    mask = torch.ones(1, 1, 64, 128)
    mask[..., :64] = 0
    masked = torch.zeros(1, 3, 64, 128)
    masked[:, 0, :, :64] = 1.0  # red strokes where mask == 0
    with UNetSpy(pipe) as spy:
        out = run(pipe, photo, steps=1, mask=mask, masked_hint=masked)
    x = spy.samples[0]
    assert torch.all(x[:, 4, :, :8] == 0) and torch.all(x[:, 4, :, 8:] == 1)  # nearest to latent size
    assert mean_l_diff(out.images[0], photo) <= 2


# ---------------------------------------------------------------- media (the colorize input path)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_load_image_applies_exif_orientation():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 40) and out.mode == "RGB"
    top = np.asarray(out)[5, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is on top after rotation


def test_load_image_modes_to_rgb():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.all(np.asarray(load_image(_png(rgba))) == 255)  # transparent -> white
    la = Image.new("LA", (4, 4), (0, 128))
    assert np.all(np.abs(np.asarray(load_image(_png(la))).astype(int) - 127) <= 1)  # half black over white
    pal = Image.new("P", (4, 4))
    pal.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(load_image(_png(pal)))[0, 0].tolist() == [10, 20, 30]
    g16 = Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16))
    assert g16.mode.startswith("I")
    assert np.asarray(load_image(_png(g16)))[0, 0].tolist() == [127, 127, 127]  # scaled, not clipped
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=100)
    px = np.asarray(load_image(buf.getvalue()))[0, 0]
    assert load_image(buf.getvalue()).mode == "RGB" and px[0] > 200 and px[1] < 60


def test_load_image_first_frame_and_errors():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(load_image(buf.getvalue()))[0, 0]
    assert first[0] > 200 and first[1] < 60
    with pytest.raises(ValueError, match="not a decodable image"):
        load_image(b"definitely not an image")
    with pytest.raises(ValueError, match="limit"):
        load_image(_png(Image.new("RGB", (100, 100))), max_pixels=50 * 50)


@pytest.mark.parametrize("fmt, ctype, magic", [("png", "image/png", b"\x89PNG"), ("jpeg", "image/jpeg", b"\xff\xd8"),
                                               ("jpg", "image/jpeg", b"\xff\xd8"), ("webp", "image/webp", b"RIFF")])
def test_encode_image(photo, fmt, ctype, magic):
    data, content_type = encode_image(photo, fmt)
    assert content_type == ctype and data.startswith(magic)
    back = load_image(data)
    assert back.size == photo.size
    diff = np.abs(np.asarray(back).astype(int) - np.asarray(photo).astype(int)).mean()
    assert diff == 0 if fmt == "png" else diff < 8


def test_encode_image_rejects_unknown_format(photo):
    with pytest.raises(ValueError, match="format"):
        encode_image(photo, "bmp")
