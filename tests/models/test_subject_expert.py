"""DreamBooth-LoRA on the tiny profile: the artifact holds the LoRA parameters and nothing
else, loads back onto the base and reproduces the tuned model exactly; tuning touches only the
LoRA parameters; prior preservation adds lambda x L_prior; cancel within one step.

64x64 px, 1-3 tuning steps, 2 denoising steps: seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from models.subject import expert as ex
from models.subject.loader import load_subject_expert
from models.subject.lora import UNET_TARGETS, ArtifactMismatch, LoraArtifact

STEPS = 2


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(skimage.data.chelsea()).resize((80, 64)),
            Image.fromarray(skimage.data.coffee()).resize((64, 72)),
            Image.fromarray(skimage.data.astronaut()).resize((64, 64))]


@pytest.fixture(scope="module")
def pipe():
    return load_subject_expert("tiny")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tune(pipe, photos, steps=STEPS, **kw):
    kw.setdefault("learning_rate", 1e-2)  # tiny steps must move the adapter visibly
    return pipe.tune(photos, "cat", num_steps=steps, generator=gen(1), **kw)


def sample(pipe, seed=3) -> np.ndarray:
    return pipe.generate("a sks cat on the beach", num_inference_steps=STEPS, generator=gen(seed),
                         output_type="np").images


def base_names(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every non-LoRA parameter and buffer, named as in the plain model (peft wraps a targeted
    Linear as `<name>.base_layer`)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_artifact_holds_only_the_lora_parameters(pipe, photos):
    tune(pipe, photos)
    art = pipe.export_lora()
    tensors = art.tensors()
    # the reference: every Linear of a fresh base UNet named like a target gets A (r x in) and B (out x r)
    base_unet = load_subject_expert("tiny").unet
    expected = {}
    for name, mod in base_unet.named_modules():
        if isinstance(mod, nn.Linear) and any(name == t or name.endswith("." + t) for t in UNET_TARGETS):
            expected[f"unet.{name}.lora_A.weight"] = (4, mod.in_features)
            expected[f"unet.{name}.lora_B.weight"] = (mod.out_features, 4)
    assert expected and {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert art.meta["num_parameters"] == sum(a * b for a, b in expected.values())
    assert art.meta["lora"]["unet"] == {"r": 4, "lora_alpha": 4.0, "target_modules": sorted(UNET_TARGETS),
                                        "init_lora_weights": "gaussian"}
    assert "text_encoder" not in art.meta["lora"]  # frozen unless asked
    assert art.base_model == pipe.base_model_id and art.meta["identifier"] == "sks"
    all_params = sum(p.numel() for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters())
    assert art.meta["num_parameters"] < all_params / 20  # a small delta, not a checkpoint


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_artifact_loads_onto_the_base_and_reproduces_the_tuned_output(pipe, photos, train_text_encoder):
    tune(pipe, photos, train_text_encoder=train_text_encoder)
    tuned = sample(pipe)
    art = pipe.export_lora()
    stored = LoraArtifact.from_parts(art.weights, art.meta_json())  # as the store hands it back
    tune(pipe, photos, train_text_encoder=train_text_encoder)
    assert pipe.export_lora().weights == art.weights  # the same seed tunes the same adapter

    fresh = load_subject_expert("tiny")
    base = sample(fresh)
    assert not np.array_equal(base, tuned)  # the adapter matters (else the next line proves nothing)
    fresh.load_lora(stored)
    np.testing.assert_array_equal(sample(fresh), tuned)
    assert fresh.tuning["subject_class"] == "cat"
    fresh.unload_lora()
    np.testing.assert_array_equal(sample(fresh), base)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_tuning_changes_only_the_lora_parameters(pipe, photos, train_text_encoder):
    pipe.unload_lora()
    before = {part: base_names(m) for part, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder),
                                                  ("vae", pipe.vae))}
    out = tune(pipe, photos, train_text_encoder=train_text_encoder)
    assert out.steps == STEPS and all(np.isfinite(out.losses))
    for part, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder), ("vae", pipe.vae)):
        after = base_names(m)
        assert after.keys() == before[part].keys(), part
        for k, v in after.items():
            assert torch.equal(v, before[part][k]), f"{part}.{k} changed"
    lora = pipe.trainable_parameters()
    assert {k.split(".", 1)[0] for k in lora} == ({"unet", "text_encoder"} if train_text_encoder else {"unet"})
    moved = [k for k, p in lora.items() if "lora_B" in k and p.abs().max() > 0]  # B starts at zero
    assert len(moved) == sum("lora_B" in k for k in lora)
    art = pipe.export_lora()
    assert ("text_encoder" in art.meta["lora"]) == train_text_encoder


def test_prior_preservation_adds_weighted_class_loss(pipe, photos):
    """Step 0's loss (before any update, the same random draws) is L_inst + lambda * L_prior:
    linear in lambda, so loss(2) - loss(1) == loss(1) - loss(0) != 0."""
    class_images = [Image.fromarray(skimage.data.rocket()).resize((64, 64))]
    first = [tune(pipe, photos, steps=1, prior_preservation=True, class_images=class_images,
                  prior_loss_weight=w).losses[0] for w in (0.0, 1.0, 2.0)]
    prior = first[1] - first[0]
    assert prior > 0 and first[2] - first[1] == pytest.approx(prior, rel=1e-5)
    assert pipe.tuning["training"]["num_class_images"] == 1


def test_class_images_come_from_the_base_model(pipe, photos):
    tune(pipe, photos)  # an adapter is loaded; class images must ignore it
    images = pipe.generate_class_images("cat", num_images=2, num_inference_steps=STEPS, generator=gen(5),
                                        batch_size=2)
    fresh = load_subject_expert("tiny")
    ref = fresh.generate(ex.class_prompt("cat"), num_images=2, num_inference_steps=STEPS, generator=gen(5)).images
    assert len(images) == 2
    for a, b in zip(images, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tuning_cancels_within_one_step_and_leaves_no_adapter(pipe, photos):
    seen = []

    def cancel_at_second(p, i, t, kw):
        seen.append(i)
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        tune(pipe, photos, steps=50, callback_on_step_end=cancel_at_second)
    assert seen == [0, 1]
    assert pipe.trainable_parameters() == {}  # the half-tuned subject is gone
    with pytest.raises(Stop):
        pipe.generate("a cat", num_inference_steps=5, generator=gen(0), callback_on_step_end=cancel_at_second)
    assert seen == [0, 1, 0, 1]


def test_artifact_mismatch_is_refused(pipe, photos):
    tune(pipe, photos)
    art = pipe.export_lora()
    other = load_subject_expert("tiny", seed=1)  # another base model id
    with pytest.raises(ArtifactMismatch, match="tuned on"):
        other.load_lora(art)
    with pytest.raises(ArtifactMismatch, match="format"):
        LoraArtifact.from_parts(art.weights, {**art.meta, "format": "something else"})
    bad = LoraArtifact(art.weights, {**art.meta, "lora": {"unet": {**art.meta["lora"]["unet"], "r": 8}}})
    with pytest.raises(ArtifactMismatch, match="shape"):
        load_subject_expert("tiny").load_lora(bad)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_steps=0), "num_steps"), (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(rank=0), "rank"), (dict(identifier=""), "identifier"), (dict(instance_images=[]), "subject_images"),
])
def test_bad_tuning_arguments_name_the_argument(pipe, photos, kwargs, name):
    kw = dict(instance_images=photos, subject_class="cat", num_steps=1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=name):
        pipe.tune(**kw)


def test_expert_prompt_and_seeded_generation(pipe):
    pipe.unload_lora()
    assert ex.expert_prompt(" swimming ", "sks", "dog") == "a sks dog swimming"
    np.testing.assert_array_equal(sample(pipe, 7), sample(pipe, 7))
    with pytest.raises(ValueError, match="height"):
        pipe.generate("a cat", height=60)
