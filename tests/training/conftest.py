"""Training tests run single-threaded: the test machine's cores are shared, and oversubscribed intra-op threads
make tiny models ~20x slower."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
