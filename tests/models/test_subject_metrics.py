"""DreamBench metrics against reference computations, and the subject family's profiles:
pretrained folders load strictly (every missing file named) and reproduce the tiny models
they were saved from; the weights layout stays importable without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from models.profiles import WeightsMissing
from models.subject import metrics, tiny
from models.subject import weights_layout as layout
from models.subject.loader import load_subject_expert, load_subject_incontext, load_subject_metrics


@pytest.fixture(autouse=True)
def no_env_model_dir(monkeypatch):
    monkeypatch.delenv(layout.MODEL_DIR_ENV, raising=False)


def cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_metric_functions_equal_a_reference_loop():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    r = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    pairs = [cos(a.tolist(), b.tolist()) for a in g for b in r]
    assert metrics.clip_i(g, r) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert metrics.dino(g, r) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    t = r[:1]
    assert metrics.clip_t(g, t) == pytest.approx(np.mean([cos(a.tolist(), t[0].tolist()) for a in g]), abs=1e-12)
    per_image = r[:3]
    assert metrics.clip_t(g, per_image) == pytest.approx(
        np.mean([cos(a.tolist(), b.tolist()) for a, b in zip(g, per_image)]), abs=1e-12)
    assert metrics.clip_i(g, g * 3.0) > metrics.clip_i(g, r)  # scale-free; identical sets score highest
    with pytest.raises(ValueError, match="widths"):
        metrics.clip_i(g, torch.randn(2, 4))


def test_metric_prompt_names_the_class():
    assert metrics.metric_prompt("a sks dog in the snow", "sks", "dog") == "a dog in the snow"
    assert metrics.metric_prompt("sks on a beach", "sks", "dog") == "dog on a beach"
    assert metrics.metric_prompt("a dog swimming", None, "dog") == "a dog swimming"


@pytest.fixture(scope="module")
def scorer():
    return load_subject_metrics("tiny")


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(skimage.data.chelsea()).resize((90, 60)), Image.fromarray(skimage.data.coffee())]


def test_clip_preprocessing_equals_transformers_clip_processor(scorer, images):
    ref = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                             do_center_crop=True, resample=3)(images=images, return_tensors="pt").pixel_values
    ours = scorer.clip_pixels(images)
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    assert (ours - ref).abs().mean() < 0.01  # resizers differ by rounding only


def test_scorer_composes_the_model_embeddings(scorer, images):
    gen, subject = images[:1], images
    got = scorer.score(gen, subject, "a cat on a sofa")
    m = scorer.clip
    with torch.no_grad():
        def image(x):
            return m.visual_projection(m.vision_model(pixel_values=scorer.clip_pixels(x)).pooler_output)

        tok = scorer.clip_tokenizer(["a cat on a sofa"], padding="max_length", max_length=77, return_tensors="pt")
        text = m.text_projection(m.text_model(**tok).pooler_output)
        cls = [scorer.dino(pixel_values=scorer.dino_pixels(x)).last_hidden_state[:, 0] for x in (gen, subject)]
    assert got["clip_i"] == pytest.approx(np.mean([cos(image(gen)[0].tolist(), e.tolist()) for e in image(subject)]))
    assert got["clip_t"] == pytest.approx(cos(image(gen)[0].tolist(), text[0].tolist()))
    assert got["dino"] == pytest.approx(np.mean([cos(cls[0][0].tolist(), e.tolist()) for e in cls[1]]))
    assert scorer.score(subject, subject, metrics=["clip_i"])["clip_i"] < 1.0
    assert scorer.score(gen, gen, metrics=["clip_i", "dino"]) == pytest.approx({"clip_i": 1.0, "dino": 1.0})
    with pytest.raises(ValueError, match="metrics"):
        scorer.score(gen, subject, "x", metrics=["fid"])


def _save_incontext(pipe, root):
    for name in ("qformer", "text_encoder", "unet", "vae", "tokenizer", "scheduler", "image_processor"):
        getattr(pipe, name).save_pretrained(root / layout.BLIPDIFFUSION_DIR / name)
    tiny.write_bert_tokenizer(root / layout.BERT_TOKENIZER_DIR)
    (root / layout.BLIPDIFFUSION_DIR / "model_index.json").write_text(json.dumps(
        {"ctx_begin_pos": 2, "mean": pipe.config.mean, "std": pipe.config.std}))


def test_pretrained_folders_load_strictly_and_reproduce_the_saved_models(tmp_path, images):
    incontext, expert, scorer = load_subject_incontext("tiny"), load_subject_expert("tiny"), load_subject_metrics("tiny")
    for component in ("in_context", "expert", "metrics"):
        with pytest.raises(WeightsMissing) as err:
            {"in_context": load_subject_incontext, "expert": load_subject_expert,
             "metrics": load_subject_metrics}[component]("pretrained", tmp_path)
        assert err.value.missing == [alts[0] for alts in layout.REQUIRED[component]]
    _save_incontext(incontext, tmp_path)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(expert, name).save_pretrained(tmp_path / layout.SD15_DIR / name)
    scorer.clip.save_pretrained(tmp_path / layout.CLIP_B32_DIR)
    scorer.clip_tokenizer.save_pretrained(tmp_path / layout.CLIP_B32_DIR)
    scorer.dino.save_pretrained(tmp_path / layout.DINO_DIR)
    assert all(layout.subject_weights_missing(c, tmp_path) == [] for c in layout.REQUIRED)

    kw = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    loaded = load_subject_incontext("auto", tmp_path)
    assert loaded.model_profile == "pretrained" and loaded.config.default_size == 512
    a = incontext("a hat", images, "cat", generator=torch.Generator().manual_seed(0), **kw).images
    b = loaded("a hat", images, "cat", generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_array_equal(a, b)
    loaded_expert = load_subject_expert("pretrained", tmp_path)
    assert loaded_expert.base_model_id == layout.SD15_DIR
    a = expert.generate("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    b = loaded_expert.generate("a cat", generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_array_equal(a, b)
    assert load_subject_metrics("pretrained", tmp_path).score(images[:1], images, "a cat") == pytest.approx(
        scorer.score(images[:1], images, "a cat"), abs=1e-6)

    (tmp_path / layout.BERT_TOKENIZER_DIR / "vocab.txt").unlink()
    with pytest.raises(WeightsMissing, match="bert-base-uncased/vocab.txt"):
        load_subject_incontext("pretrained", tmp_path)
    assert load_subject_incontext("auto", tmp_path).model_profile == "tiny"


def test_weights_layout_imports_without_torch():
    code = ("import sys; import models.subject.weights_layout as w; import models.fetch as f; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert f.MANIFEST['subject.in_context'][0].repo_id == 'Salesforce/blipdiffusion'; "
            "assert f.MANIFEST['subject.in_context'][0].folder == w.BLIPDIFFUSION_DIR; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
