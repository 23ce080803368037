"""Fixtures of the attack tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards. Label-only attacks forward many small
    batches (binary searches), which two threads slow down tenfold on a loaded two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
