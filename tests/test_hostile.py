"""Hostile input: a checkpoint never runs code it names, and every error is one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from factcli.errors import FactError
from factcli.io.checkpoint import load_checkpoint
from tests.helpers import fact, fact_inprocess, tiny_checkpoint


def _one_clean_line(result, code=2):
    """Exit `code`, exactly one stderr line, no traceback; returns that line."""
    stderr = result.stderr if hasattr(result, "returncode") else result.stderr
    exit_code = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert exit_code == code, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _shell_checkpoint(tmp_path, suffix, arch, **params):
    """A valid checkpoint whose `model.arch` names a function that would create `marker`."""
    model = {"arch": arch, **params}
    path = tmp_path / f"evil{suffix}"
    tiny_checkpoint(path)
    if suffix == ".pt":
        content = torch.load(path, weights_only=True)
        content["model"] = model
        torch.save(content, path)
    else:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as handle:
            metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        save_file(tensors, str(path), metadata={**metadata, "model": json.dumps(model)})
    return path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_checkpoint_naming_os_system_runs_nothing(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = _shell_checkpoint(tmp_path, suffix, "os:system", command=f"touch {marker}")
    for args in (["analyze", evil], ["compare", evil], ["compare", "--features", evil, evil]):
        line = _one_clean_line(fact_inprocess(*args))
        assert "'os:system'" in line and "--arch os:system" in line
        assert "--trust-model-code" in line, line
    assert not marker.exists()
    # the real script, too
    line = _one_clean_line(fact("analyze", evil))
    assert "names the model factory 'os:system'" in line
    assert not marker.exists()


def test_the_library_refuses_a_named_factory_unless_trusted(tmp_path):
    from factcli import analyze

    marker = tmp_path / "pwned"
    evil = _shell_checkpoint(tmp_path, ".pt", "subprocess:getoutput", cmd=f"touch {marker}")
    with pytest.raises(FactError, match="subprocess:getoutput"):
        analyze(evil)
    with pytest.raises(FactError, match="subprocess:getoutput"):
        load_checkpoint(evil).build()
    assert not marker.exists()
    # trusted on purpose: the factory runs (and here returns a str, which is refused)
    with pytest.raises(FactError, match="not an nn.Module"):
        load_checkpoint(evil, trust_model_code=True).build()
    assert marker.exists()


def test_built_in_archs_need_no_trust(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    assert isinstance(load_checkpoint(ckpt).build(), torch.nn.Module)


def test_a_factory_named_on_the_command_line_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(tmp_path)
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def wide(in_features, hidden):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(hidden, 2))\n")
    model = {"arch": "mymodels:wide", "in_features": 4, "hidden": 5}
    ckpt = tiny_checkpoint(tmp_path / "u.pt", model=model)
    env = {"PYTHONPATH": str(tmp_path)}
    refused = fact("analyze", ckpt, "-f", "jsonl", env=env)
    assert "--arch mymodels:wide" in _one_clean_line(refused)
    for allow in (["--arch", "mymodels:wide"], ["--trust-model-code"]):
        result = fact("analyze", ckpt, "-f", "jsonl", "--relations", "fact", *allow, env=env)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 2


def test_the_current_directory_is_not_importable(tmp_path):
    """A module planted next to the checkpoint is not found, even when the file is trusted."""
    marker = tmp_path / "pwned"
    (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                         "def make(**kw):\n    pass\n")
    evil = _shell_checkpoint(tmp_path, ".pt", "planted:make")
    for runner in ([sys.executable, "-m", "factcli"],):
        result = subprocess.run([*runner, "analyze", str(evil), "--trust-model-code"],
                                cwd=tmp_path, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
        assert "cannot import model factory 'planted:make'" in _one_clean_line(result)
    assert not marker.exists()


@pytest.mark.parametrize("text", ["[/]", "[bold]x[/bold]", "a[/]b", "[link=x]"])
def test_markup_like_text_is_printed_as_is(tmp_path, text):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    for args in (["analyze", tmp_path / text], ["analyze", ckpt, "--layers", text],
                 ["analyze", ckpt, "--data", text], ["compare", ckpt, "--require", text]):
        line = _one_clean_line(fact_inprocess(*args))
        assert text in line, line


@pytest.mark.parametrize("args", [
    [], ["analyze"], ["analyze", "x", "--alpha", "foo"], ["nope"], ["analyze", "x", "--bogus"],
    ["compare"], ["show"], ["train", "mlp", "--width", "many"]])
def test_usage_errors_are_one_line(args):
    result = fact_inprocess(*args)
    if not args:  # `fact` alone prints its help
        assert result.exit_code == 2 and "Usage" in result.output
        return
    line = _one_clean_line(result)
    assert line.startswith("error: ") and line.endswith("--help)"), line
    assert "╭" not in line


def test_usage_errors_in_the_real_script():
    line = _one_clean_line(fact("analyze", "x", "--alpha", "foo"))
    assert line.startswith("error: Invalid value for '--alpha'") and \
        line.endswith("(see fact analyze --help)")


@pytest.mark.parametrize("raised", [
    OSError(28, "No space left on device", "/full/r.h5"), MemoryError(),
    RuntimeError("torch: something\nwith two lines"), ValueError("numpy broadcast")])
def test_a_library_error_in_a_command_is_one_line(tmp_path, monkeypatch, raised):
    from factcli.io import report as report_module

    def explode(*args, **kwargs):
        raise raised

    monkeypatch.setattr(report_module, "write_report", explode)
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    line = _one_clean_line(fact_inprocess("analyze", ckpt, "--report", tmp_path / "r.h5"))
    assert line.startswith("error: ")
    if isinstance(raised, OSError):
        assert line == "error: No space left on device: /full/r.h5"
    if isinstance(raised, MemoryError):
        assert "out of memory" in line
