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
