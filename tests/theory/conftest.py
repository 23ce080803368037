"""The theory experiments are many small tensor operations: one thread is fastest, and does not
collapse when other processes hold the machine's cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
