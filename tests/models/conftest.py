import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny models gain nothing from intra-op threads, and on a small shared CPU OpenMP's
    # spinning threads make them ~10x slower (measured: 0.1 s vs 1-7 s per call). Restored after.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    """The tiny Control Color pipeline (video test modules define their own `pipe`)."""
    from models.colorization.pipeline import ControlColorPipeline
    from models.colorization.tiny import TINY_MAX_LONG_SIDE, TINY_SHORT_SIDE, tiny_components

    p = ControlColorPipeline(**tiny_components(), short_side=TINY_SHORT_SIDE, max_long_side=TINY_MAX_LONG_SIDE)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def photo():
    """A real photo at an odd, non-multiple-of-64 size."""
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.astronaut()).resize((70, 45), Image.LANCZOS)
