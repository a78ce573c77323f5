"""Fixtures of the learned-method integration tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training and the block loop are many small torch ops: one thread is faster on 2 shared
    cores (results do not depend on it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
