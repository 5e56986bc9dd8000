"""Dynamic batching: independent requests denoised as one batch keep their own results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.profiles import load
from tests.helpers import photo


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return load("colorize", "tiny")


def requests():
    img_a, img_b = photo(96, 64), photo(90, 60).transpose(0)  # different pictures, same working size
    stroke = [{"color": "#ff0000", "width": 6, "points": [[10, 10], [50, 30]]}]
    return [
        dict(image=img_a, prompt="a red car", num_images=2, generator=torch.Generator().manual_seed(1)),
        dict(image=img_b, prompt="", strokes=stroke, num_images=1, generator=torch.Generator().manual_seed(2)),
        dict(image=img_a, prompt="green", negative_prompt="grey", num_images=1, generator=torch.Generator().manual_seed(3)),
    ]


def test_batched_requests_match_their_lone_runs(pipe):
    settings = dict(num_inference_steps=3, sag_scale=0.05, sag_threshold=600)
    forwards = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: forwards.append(args[0].shape[0]))
    try:
        batched = pipe.run_batch(requests(), **settings)
    finally:
        handle.remove()
    # 4 images x CFG = one batch of 8 per UNet call; SAG adds one more call at t > 600
    assert set(forwards) == {8} and len(forwards) == 3 + sum(int(t) > 600 for t in pipe.scheduler.timesteps)
    for req, out in zip(requests(), batched):
        alone = pipe(**req, **settings)
        assert len(out.images) == req["num_images"] and out.images[0].size == req["image"].size
        for a, b in zip(out.images, alone.images):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 2  # float rounding only


def test_batch_key_groups_compatible_requests(pipe):
    key = dict(steps=20, guidance={"mode": "cfg", "scale": 7}, sag_scale=0.05, sag_threshold=600,
               deformable_decoder=False, exemplar=False)
    assert pipe.batch_key(96, 64, **key) == pipe.batch_key(90, 60, **key)
    assert pipe.batch_key(96, 64, **key) != pipe.batch_key(64, 96, **key)
    assert pipe.batch_key(96, 64, **key) != pipe.batch_key(96, 64, **{**key, "steps": 10})


def test_incompatible_requests_are_refused(pipe):
    with pytest.raises(ValueError, match="batch_key"):
        pipe.run_batch([dict(image=photo(96, 64)), dict(image=photo(64, 96))], num_inference_steps=1)
