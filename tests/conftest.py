"""Shared set-up: one torch thread (tests run beside other CPU work) and small model cases."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _float64_default_untouched():
    """Tests must not leak a changed default dtype into each other."""
    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)
