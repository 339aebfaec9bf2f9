"""Shared set-up: one thread per process (tests run beside other CPU work, and the console
script in subprocesses inherits the environment)."""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _default_dtype_untouched():
    """Tests must not leak a changed default dtype into each other."""
    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)
