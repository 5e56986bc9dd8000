"""The model registry: profiles tiny | pretrained | auto, weights checks, pretrained round trip."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from models import profiles
from models.colorization.pipeline import ControlColorPipeline
from models.colorization.tiny import tiny_components
from tests.models.caption_dir import write_tiny_captioner
from models.profiles import (
    MODEL_DIR_ENV,
    WeightsMissing,
    default_dtype,
    deformable_weights_missing,
    exemplar_weights_missing,
    guide_weights_missing,
    load_colorization,
    missing_weights,
    required_weights,
    resolve_profile,
)


@pytest.fixture(autouse=True)
def no_env_model_dir(monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((70, 45), Image.LANCZOS)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A model dir holding the tiny pipeline saved in diffusers format under controlcolor/, and
    its captioner under blip-image-captioning-base/."""
    root = tmp_path_factory.mktemp("models")
    pipe = load_colorization("tiny")
    pipe.save_pretrained(root / "controlcolor")
    write_tiny_captioner(root)
    return root


def colorize(pipe, image, seed):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
    return np.asarray(out.images[0])


def test_tiny_builds_are_identical():
    a, b = tiny_components(), tiny_components()
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    # building does not disturb the caller's RNG stream
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    tiny_components()
    assert torch.equal(torch.rand(3), expected)


def test_tiny_architecture_matches_control_color_shape():
    c = tiny_components()
    assert c["unet"].config.in_channels == 9 and c["unet"].config.out_channels == 4
    assert c["controlnet"].config.in_channels == 4 and c["controlnet"].config.conditioning_channels == 3
    assert c["unet"].config.down_block_types == c["controlnet"].config.down_block_types
    # the ControlNet's pixel hint embedding and the VAE both downsample 8x
    hint = torch.zeros(1, 3, 64, 64)
    assert c["controlnet"].controlnet_cond_embedding(hint).shape[-2:] == (8, 8)
    assert c["vae"].encode(hint).latent_dist.mean.shape == (1, 4, 8, 8)
    s = c["scheduler"].config
    assert (s.beta_schedule, s.beta_start, s.beta_end, s.num_train_timesteps) == ("scaled_linear", 0.00085, 0.012, 1000)
    assert (s.set_alpha_to_one, s.steps_offset, s.clip_sample) == (False, 1, False)
    assert c["text_encoder"].config.max_position_embeddings == 77 == c["tokenizer"].model_max_length
    ids = c["tokenizer"](["a cat"]).input_ids[0]
    assert ids[0] == c["tokenizer"].bos_token_id and ids[-1] == c["tokenizer"].eos_token_id


def test_load_tiny(photo):
    pipe = load_colorization("tiny")
    assert isinstance(pipe, ControlColorPipeline) and pipe.model_profile == "tiny"
    assert (pipe.config.short_side, pipe.config.max_long_side) == (64, 192)
    assert pipe.unet.dtype == torch.float32
    override = load_colorization("tiny", short_side=128, max_long_side=256)
    assert override.working_size_for(photo) == (192, 128)


def test_pretrained_round_trip_gives_identical_outputs(saved_dir, photo):
    assert missing_weights("colorize", saved_dir) == []
    tiny = load_colorization("tiny")
    pre = load_colorization("pretrained", saved_dir)
    assert pre.model_profile == "pretrained"
    assert (pre.config.short_side, pre.config.max_long_side) == (512, 1536)
    for name in ("unet", "controlnet", "vae", "text_encoder", "caption_model"):
        a, b = getattr(tiny, name).state_dict(), getattr(pre, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # same weights at the same working size -> the same pixels for the same seed
    pre.register_to_config(short_side=64, max_long_side=192)
    same = colorize(pre, photo, 3)
    assert np.array_equal(colorize(tiny, photo, 3), same)
    assert not np.array_equal(colorize(pre, photo, 4), same)


def test_auto_uses_pretrained_when_present(saved_dir):
    assert resolve_profile("auto", saved_dir) == "pretrained"
    assert load_colorization("auto", saved_dir, short_side=64).model_profile == "pretrained"


def test_auto_falls_back_to_tiny_loudly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="models.profiles"):
        assert resolve_profile("auto", tmp_path) == "tiny"
        assert resolve_profile("auto", None) == "tiny"
        pipe = load_colorization("auto", tmp_path)
    assert pipe.model_profile == "tiny"
    assert any("TINY" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_pretrained_missing_names_what_is_missing(tmp_path, saved_dir):
    with pytest.raises(WeightsMissing) as err:
        load_colorization("pretrained", tmp_path)
    msg = str(err.value)
    assert MODEL_DIR_ENV in msg and str(tmp_path) in msg
    for folder in ("unet", "controlnet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert f"controlcolor/{folder}/" in msg
    assert "blip-image-captioning-base/config.json" in msg  # the captioner is required too
    assert err.value.missing == required_weights("colorize")
    # a partial install names only what is absent
    partial = tmp_path / "partial"
    shutil.copytree(saved_dir, partial)
    shutil.rmtree(partial / "controlcolor" / "controlnet")
    assert missing_weights("colorize", partial) == [
        "controlcolor/controlnet/config.json", "controlcolor/controlnet/diffusion_pytorch_model.safetensors"]
    with pytest.raises(WeightsMissing, match="controlnet") as err:
        load_colorization("pretrained", partial)
    assert "unet" not in str(err.value)
    # no model dir at all
    with pytest.raises(WeightsMissing, match=f"{MODEL_DIR_ENV} is not set"):
        load_colorization("pretrained", None)


def test_model_dir_from_env(monkeypatch, saved_dir):
    monkeypatch.setenv(MODEL_DIR_ENV, str(saved_dir))
    assert missing_weights("colorize", None) == []
    assert resolve_profile("auto", None) == "pretrained"


def test_unknown_profile_and_kind():
    with pytest.raises(ValueError, match="profile"):
        resolve_profile("huge", None)
    with pytest.raises(ValueError, match="kind"):
        required_weights("teleport")


def test_registry_and_dtype():
    assert "colorize" in profiles.REGISTRY
    assert default_dtype("cpu") == torch.float32
    assert default_dtype("cuda") == torch.float16


# ---------------------------------------------------------------- colorize: optional parts


def _subset(saved_dir, tmp_path, drop=()):
    root = tmp_path / "models"
    shutil.copytree(saved_dir, root)
    for name in drop:
        shutil.rmtree(root / "controlcolor" / name)
    return root


def test_pretrained_without_exemplar_weights_loads_and_names_them(saved_dir, tmp_path, photo):
    root = _subset(saved_dir, tmp_path, drop=("image_encoder",))
    expected = ["controlcolor/image_encoder/config.json", "controlcolor/image_encoder/model.safetensors"]
    assert exemplar_weights_missing(root) == expected and missing_weights("colorize", root) == []
    pipe = load_colorization("pretrained", root, short_side=64)
    assert not pipe.supports_exemplar and pipe.supports_deformable_decoder
    assert pipe.missing_optional["exemplar"] == expected
    with pytest.raises(ValueError, match=r"`exemplar`.*controlcolor/image_encoder/config\.json.*VISIONJOBS_MODEL_DIR"):
        pipe(photo, num_inference_steps=1, exemplar=photo)
    assert colorize(pipe, photo, 1).shape == (45, 70, 3)  # everything else still works


def test_optional_weights_checks(saved_dir, tmp_path, monkeypatch):
    assert exemplar_weights_missing(saved_dir) == [] and deformable_weights_missing(saved_dir) == []
    root = _subset(saved_dir, tmp_path, drop=("deformable_vae",))
    assert deformable_weights_missing(root) == ["controlcolor/deformable_vae/config.json",
                                                "controlcolor/deformable_vae/diffusion_pytorch_model.safetensors"]
    assert len(exemplar_weights_missing(None)) == 2  # no model dir: everything is missing
    monkeypatch.setenv(MODEL_DIR_ENV, str(saved_dir))
    assert exemplar_weights_missing(None) == []
    pipe = load_colorization("pretrained", root, short_side=64)
    assert not pipe.supports_deformable_decoder and not pipe.supports_autoguidance
    assert "guide dir" in pipe.missing_optional["autoguidance"][0]
    assert load_colorization("pretrained", saved_dir, optional=False).missing_optional == {}


def test_autoguidance_guide_dir(saved_dir, tmp_path, photo):
    tiny = load_colorization("tiny")
    guide = tmp_path / "guide"
    tiny.guide_unet.save_pretrained(guide / "unet")
    tiny.guide_controlnet.save_pretrained(guide / "controlnet")
    assert guide_weights_missing(guide) == []
    pre = load_colorization("pretrained", saved_dir, guide_dir=guide)
    assert pre.supports_autoguidance
    pre.register_to_config(short_side=64, max_long_side=192)
    g = {"mode": "autoguidance", "scale": 2.0}
    for p in (tiny, pre):
        p.set_progress_bar_config(disable=True)
    a = tiny(photo, num_inference_steps=2, guidance=g, generator=torch.Generator().manual_seed(1)).images[0]
    b = pre(photo, num_inference_steps=2, guidance=g, generator=torch.Generator().manual_seed(1)).images[0]
    # The same weights, loaded from files: equal up to float summation order (weights read from
    # safetensors can take other CPU kernels than freshly built ones; seen: 2/255 in 0.02% of
    # pixels). Another guide (or none) moves most pixels, so this still tells the guide was used.
    diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005
    other = tiny(photo, num_inference_steps=2, guidance={"mode": "cfg", "scale": 2.0},
                 generator=torch.Generator().manual_seed(1)).images[0]
    assert (np.abs(np.asarray(other, dtype=int) - np.asarray(b, dtype=int)) > 2).mean() > 0.2
    # relative guide dirs resolve under the model dir
    root = _subset(saved_dir, tmp_path)
    shutil.copytree(guide, root / "guide-relative")
    assert guide_weights_missing("guide-relative", root) == []
    assert load_colorization("pretrained", root, guide_dir="guide-relative").supports_autoguidance
    # a configured but broken guide dir is a loud not-ready, naming the files
    shutil.rmtree(guide / "controlnet")
    assert guide_weights_missing(guide) == [str(guide / "controlnet/config.json"),
                                            str(guide / "controlnet/diffusion_pytorch_model.safetensors")]
    with pytest.raises(WeightsMissing, match="controlnet/config.json"):
        load_colorization("pretrained", saved_dir, guide_dir=guide)
    assert guide_weights_missing(None) == ["<no guide dir configured>"]
