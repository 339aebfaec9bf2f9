"""Shared set-up: one thread per process (tests run beside other CPU work, and the console
script in subprocesses inherits the environment). No test touches the network or the user's
dataset cache: downloads are off and the cache is a fresh folder, unless a test (with its own
local mirror) says otherwise."""

import atexit
import os
import shutil
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["FACT_OFFLINE"] = "1"
os.environ["FACT_DATA_DIR"] = tempfile.mkdtemp(prefix="factcli-test-cache-")
atexit.register(shutil.rmtree, os.environ["FACT_DATA_DIR"], ignore_errors=True)
os.environ.pop("FACT_DATA_MIRROR", None)
os.environ.pop("FACT_DATA_CHECKSUMS", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _default_dtype_untouched():
    """Tests must not leak a changed default dtype into each other."""
    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)
