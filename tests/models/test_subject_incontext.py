"""BLIP-Diffusion on the tiny profile: the subject embedding reaches the text encoder's input
at the documented positions (and only there), several photos average, the Q-Former and the
context text tower equal transformers' reference modules, seeds reproduce, cancel within a step.

64x64 px images, 32 px subject crops, 2 denoising steps.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from transformers import Blip2QFormerModel as ReferenceQFormer
from transformers import CLIPTextModel

from models.subject.incontext import InContextSubjectPipeline
from models.subject.loader import load_subject_incontext

STEPS = 2


@pytest.fixture(scope="module")
def pipe() -> InContextSubjectPipeline:
    p = load_subject_incontext("tiny")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def cat():
    return Image.fromarray(skimage.data.chelsea()).resize((90, 60))


@pytest.fixture(scope="module")
def coffee():
    return Image.fromarray(skimage.data.coffee()).resize((60, 60))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def run(pipe, images, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("generator", gen(0))
    return pipe("swimming underwater", images, "cat", output_type="np", **kw)


def capture_text_inputs(pipe, fn):
    """The text encoder's input sequences (token + spliced context + position embeddings) and
    outputs of every call `fn` makes."""
    seen = {"inputs": [], "outputs": []}
    h1 = pipe.text_encoder.text_model.embeddings.register_forward_hook(lambda m, a, o: seen["inputs"].append(o))
    h2 = pipe.text_encoder.register_forward_hook(lambda m, a, o: seen["outputs"].append(o[0]))
    try:
        result = fn()
    finally:
        h1.remove()
        h2.remove()
    return result, seen


def test_subject_embedding_sits_at_the_documented_positions(pipe, cat):
    out, seen = capture_text_inputs(pipe, lambda: run(pipe, [cat], guidance_scale=7.5))
    cond, negative = seen["inputs"]  # the prompt with the subject, then (CFG) the negative prompt without
    q, pos = pipe.num_query_tokens, pipe.context_positions
    assert list(pos) == list(range(2, 2 + q)) and cond.shape[1] == negative.shape[1] == 77
    emb = pipe.text_encoder.text_model.embeddings
    position = emb.position_embedding.weight[:77]
    # the documented positions hold the subject embedding ...
    torch.testing.assert_close(cond[0, pos.start:pos.stop] - position[pos.start:pos.stop], out.subject.embeds[0],
                               rtol=0, atol=1e-6)
    # ... and every other position the prompt's tokens: BOS, "a" before it, the class word after
    ids = pipe.tokenizer([out.prompt], padding="max_length", truncation=True, max_length=77 - q,
                         return_tensors="pt").input_ids[0]
    tokens = emb.token_embedding(ids)
    torch.testing.assert_close(cond[0, :pos.start] - position[:pos.start], tokens[:pos.start], rtol=0, atol=1e-6)
    torch.testing.assert_close(cond[0, pos.stop:] - position[pos.stop:], tokens[pos.start:], rtol=0, atol=1e-6)
    assert out.prompt.startswith("a cat swimming underwater, a cat swimming underwater")


def test_the_subject_photo_changes_the_context_and_the_image(pipe, cat, coffee):
    a, seen_a = capture_text_inputs(pipe, lambda: run(pipe, [cat], guidance_scale=1.0))
    b, seen_b = capture_text_inputs(pipe, lambda: run(pipe, [coffee], guidance_scale=1.0))
    ha, hb = seen_a["outputs"][0], seen_b["outputs"][0]
    start = pipe.config.ctx_begin_pos
    # causal text tower: positions before the context cannot see the subject, all after it do
    torch.testing.assert_close(ha[:, :start], hb[:, :start], rtol=0, atol=0)
    assert (ha[0, start:] - hb[0, start:]).abs().amax(-1).min() > 0
    assert not np.array_equal(a.images, b.images)


def test_several_photos_average_their_subject_embeddings(pipe, cat, coffee):
    one_a = pipe.encode_subject([cat], "cat").embeds
    one_b = pipe.encode_subject([coffee], "cat").embeds
    both = pipe.encode_subject([cat, coffee], "cat")
    torch.testing.assert_close(both.embeds, (one_a + one_b) / 2, rtol=0, atol=1e-6)
    weighted = pipe.encode_subject([cat, coffee], "cat", subject_weights=[3, 1])
    assert weighted.weights == [0.75, 0.25]
    torch.testing.assert_close(weighted.embeds, 0.75 * one_a + 0.25 * one_b, rtol=0, atol=1e-6)
    # the subject class is read by the Q-Former too
    assert not torch.equal(pipe.encode_subject([cat], "dog").embeds, one_a)


def test_qformer_equals_the_transformers_qformer(pipe, cat):
    """Our forward against transformers' own BLIP-2 Q-Former loaded with the same weights."""
    q = pipe.qformer
    config = copy.deepcopy(q.config.qformer_config)
    config.use_qformer_text_input = True  # BLIP-Diffusion feeds the subject text through the Q-Former
    ref = ReferenceQFormer(config).eval()
    state = {k: v for k, v in q.state_dict().items() if k.startswith("encoder.")}
    state.update({"layernorm.weight": q.embeddings.LayerNorm.weight, "layernorm.bias": q.embeddings.LayerNorm.bias})
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]
    px = pipe.prepare_subject_images([cat, cat.rotate(90)])
    texts = ["cat", "black cat"]  # different lengths: padding is masked
    with torch.no_grad():
        ours = q(px, texts)
        tok = q.tokenizer(texts, return_tensors="pt", padding=True)
        words = q.embeddings.word_embeddings(tok.input_ids) + q.embeddings.position_embeddings(
            q.embeddings.position_ids[:, : tok.input_ids.shape[1]])
        seq = torch.cat([q.query_tokens.expand(2, -1, -1), words], dim=1)
        mask = torch.cat([torch.ones(2, q.num_query_tokens, dtype=torch.long), tok.attention_mask], dim=1)
        hidden = ref(query_embeds=seq, query_length=q.num_query_tokens, attention_mask=mask,
                     encoder_hidden_states=q.image_features(px)).last_hidden_state
        expected = q.proj_layer(hidden[:, : q.num_query_tokens])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_context_free_text_tower_equals_clip(pipe):
    te = pipe.text_encoder
    ref = CLIPTextModel(te.config).eval()
    ref.load_state_dict({k.removeprefix("text_model."): v for k, v in te.state_dict().items()}, strict=False)
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(te(ids)[0], ref(ids)[0], rtol=0, atol=1e-6)


def test_seeds_reproduce_and_per_image_generators_are_independent(pipe, cat):
    a = run(pipe, [cat], generator=gen(4)).images
    np.testing.assert_array_equal(a, run(pipe, [cat], generator=gen(4)).images)
    assert not np.array_equal(a, run(pipe, [cat], generator=gen(5)).images)
    two = run(pipe, [cat], num_images=2, generator=[gen(4), gen(9)]).images
    np.testing.assert_allclose(two[0], a[0], atol=1e-5)  # image 0 does not depend on the batch
    np.testing.assert_allclose(two[1], run(pipe, [cat], generator=gen(9)).images[0], atol=1e-5)


def test_progress_and_cancel_within_one_step(pipe, cat):
    seen = []

    class Stop(Exception):
        pass

    def cb(p, i, t, kw):
        seen.append((i, tuple(kw["latents"].shape)))
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        run(pipe, [cat], num_inference_steps=20, callback_on_step_end=cb)
    assert [i for i, _ in seen] == [0, 1, 2] and seen[0][1] == (1, 4, 8, 8)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(height=30), "height"),
    (dict(guidance_scale=float("inf")), "guidance_scale"), (dict(num_images=9), "num_images"),
    (dict(subject_weights=[1, 1]), "subject_weights"), (dict(generator=[gen(0), gen(1)]), "generator"),
])
def test_bad_arguments_name_the_argument(pipe, cat, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run(pipe, [cat], **kwargs)


def test_bad_subject_images_are_refused(pipe, cat):
    with pytest.raises(ValueError, match="subject_images"):
        pipe("x", [], "cat")
    with pytest.raises(ValueError, match="at most 8"):
        pipe("x", [cat] * 9, "cat")
    with pytest.raises(ValueError, match="subject_class"):
        pipe("x", [cat], "  ")
