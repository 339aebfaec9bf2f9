"""Small checkpoints and a runner for the console script, shared by the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from factcli.io.checkpoint import Checkpoint, save_checkpoint
from factcli.models.archs import build_model

TINY_MLP = {"arch": "mlp", "in_features": 4, "out_features": 2, "width": 6, "depth": 3,
            "activation": "tanh", "bias": True}
TINY_TRAINING = {"dataset": "teacher-linear:d=4,c=2,n=40,seed=0", "loss": "mse",
                 "weight_decay": 1e-3}


def tiny_checkpoint(path, model=None, training=None, seed=0, dtype=torch.float64, **changes):
    """A small untrained checkpoint; `changes` edit the state_dict after it is built."""
    torch.manual_seed(seed)
    spec = dict(model or TINY_MLP)
    state = {k: v.to(dtype) for k, v in build_model(spec).state_dict().items()}
    state.update(changes)
    save_checkpoint(path, Checkpoint(spec, state, dict(TINY_TRAINING if training is None
                                                       else training)))
    return path


def fact_inprocess(*args):
    """The same command in this process (typer's runner): fast, for the many bad-input cases."""
    from typer.testing import CliRunner

    from factcli.cli import app

    return CliRunner(env={"NO_COLOR": "1"}).invoke(app, [str(a) for a in args])


def fact(*args, stdin=None, env=None):
    """Run the real console script (as `python -m factcli`) and capture everything."""
    environment = {**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "factcli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=environment, timeout=300)
