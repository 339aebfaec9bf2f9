"""Hostile and careless inputs for every command, option and file kind, and a runner for them.

`make_cases(folder)` writes the files and returns the cases; `run_cases` runs each one through
the real CLI in a forked child of one subprocess started under an address-space limit (so torch
is imported once, yet every case has its own process, exit status and memory limit).
`python -m tests.hostile_inputs` prints the table reported in the note of issue 8.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

LIMIT = 3 << 30  # bytes of address space for the CLI


@dataclass
class Case:
    category: str
    label: str
    args: list[str]
    stdin: str | None = None  # a file whose bytes are piped in
    legal: bool = False  # success is a right answer too
    expect: str | None = None  # a word the one error line must contain
    codes: tuple[int, ...] = (2,)  # the failing exit statuses that are right
    fsize: int | None = None  # a file-size limit (ulimit -f, bytes): a disk that fills up


class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _h5(path, build):
    import h5py

    with h5py.File(path, "w") as handle:
        build(handle)
    return path


def _report(handle, **overrides):
    """A minimal valid factcli.report/1 with one 3×3 layer; `overrides` edit attributes."""
    import h5py
    import numpy as np

    handle.attrs.update({"format": "factcli.report/1", "dataset": "x", "loss": "mse",
                         "weight_decay": 1e-3, "alpha": 0.5, "model": "{}", "training": "{}",
                         "relations": '["fact"]', "warnings": "[]", "n_samples": 10})
    text = h5py.string_dtype()
    rows = np.array([("0", "fact", 0.9, 0.9, 0.1)], dtype=[
        ("layer", text), ("relation", text), ("pearson", "f8"), ("cosine", "f8"),
        ("rel_err", "f8")])
    handle.create_dataset("metrics", data=rows)
    group = handle.create_group("layers").create_group("0")
    group.attrs.update(name="0", in_features=3, out_features=2, kind="linear", stationarity=0.1)
    group.create_dataset("nfm", data=np.eye(3))
    group.create_dataset("fact", data=np.eye(3))
    for key, value in overrides.items():
        handle.attrs[key] = value


def _idx(path, kind, dims, body):
    path.write_bytes(bytes([0, 0, kind, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
                     + body)


def _npy_header_only(shape):
    """An .npy that declares `shape` float64 and holds no data: allocation bait."""
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def make_cases(root: Path) -> list[Case]:  # noqa: C901 - a catalogue, one entry per case
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from factcli.io.checkpoint import Checkpoint, save_checkpoint
    from factcli.models.archs import build_model

    root.mkdir(parents=True, exist_ok=True)
    mlp = {"arch": "mlp", "in_features": 4, "out_features": 2, "width": 6, "depth": 3,
           "activation": "tanh", "bias": True}
    training = {"dataset": "teacher-linear:d=4,c=2,n=40,seed=0", "loss": "mse",
                "weight_decay": 1e-3}
    torch.manual_seed(0)
    state = {k: v.double() for k, v in build_model(mlp).state_dict().items()}
    good = root / "good.pt"
    save_checkpoint(good, Checkpoint(mlp, state, training))
    good_st = root / "good.safetensors"
    save_checkpoint(good_st, Checkpoint(mlp, state, training))
    marker = root / "pwned"
    cases: list[Case] = []

    def add(category, label, *args, stdin=None, legal=False, expect=None, codes=(2,),
            fsize=None):
        cases.append(Case(category, label, [str(a) for a in args], stdin and str(stdin), legal,
                          expect, codes, fsize))

    def pt(name, content):
        path = root / name
        torch.save(content, path)
        return path

    def ckpt(name, model=None, training_=None, state_=None, **top):
        content = {"format": "factcli.checkpoint/1", "model": mlp if model is None else model,
                   "state_dict": state if state_ is None else state_,
                   "training": training if training_ is None else training_, **top}
        return pt(name, content)

    def st(name, metadata, tensors=None):
        path = root / name
        save_file(tensors or {k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata=metadata)
        return path

    # ---- code execution
    c = "code execution"
    for arch, params in (("os:system", {"command": f"touch {marker}"}),
                         ("subprocess:getoutput", {"cmd": f"touch {marker}"}),
                         ("shutil:rmtree", {"path": str(root / "victim")})):
        (root / "victim").mkdir(exist_ok=True)
        evil = ckpt(f"evil_{arch.split(':')[0]}.pt", {"arch": arch, **params})
        add(c, f".pt names {arch}: analyze", "analyze", evil, expect="--trust-model-code")
        add(c, f".pt names {arch}: compare", "compare", evil, expect="--trust-model-code")
    evil_st = st("evil.safetensors", {"format": "factcli.checkpoint/1", "model": json.dumps(
        {"arch": "os:system", "command": f"touch {marker}"}), "training": json.dumps(training)})
    add(c, "safetensors metadata names os:system: analyze", "analyze", evil_st,
        expect="--arch os:system")
    add(c, "safetensors metadata names os:system: compare --features", "compare", "--features",
        evil_st, evil_st, expect="--arch os:system")
    (root / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    planted = ckpt("planted.pt", {"arch": "planted:make"})
    add(c, "module planted in the cwd, --trust-model-code", "analyze", planted,
        "--trust-model-code", expect="cannot import model factory 'planted:make'")
    exploit = pt("pickle_code.pt", {"format": "factcli.checkpoint/1", "x": _Exploit(marker)})
    add(c, "pickle that runs code (.pt)", "analyze", exploit)
    with open(root / "bare.pkl", "wb") as handle:
        pickle.dump(_Exploit(marker), handle)
    add(c, "bare pickle", "analyze", root / "bare.pkl")

    # ---- checkpoint structure and fields
    c = "checkpoint fields"
    add(c, "missing file", "analyze", root / "nope.pt")
    add(c, "directory", "analyze", root)
    (root / "empty.pt").write_bytes(b"")
    add(c, "empty file", "analyze", root / "empty.pt")
    (root / "half.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    add(c, "truncated .pt", "analyze", root / "half.pt")
    add(c, "top level is a list", "analyze", pt("list.pt", [1, 2, 3]))
    add(c, "empty dict", "analyze", pt("emptydict.pt", {}))
    add(c, "unknown format", "analyze", pt("fmt.pt", {"format": "other/9"}))
    add(c, "format is an int", "analyze", pt("fmtint.pt", {"format": 3, "state_dict": state}))
    add(c, "model is a list", "analyze", ckpt("model_list.pt", [1]))
    add(c, "model is a string", "analyze", ckpt("model_str.pt", "mlp"))
    add(c, "arch is an int", "analyze", ckpt("arch_int.pt", {**mlp, "arch": 7}))
    add(c, "arch is a list", "analyze", ckpt("arch_list.pt", {**mlp, "arch": ["mlp"]}))
    add(c, "width is a string", "analyze", ckpt("width_str.pt", {**mlp, "width": "six"}))
    add(c, "width is a float", "analyze", ckpt("width_float.pt", {**mlp, "width": 6.5}))
    add(c, "width is a bool", "analyze", ckpt("width_bool.pt", {**mlp, "width": True}))
    add(c, "width is negative", "analyze", ckpt("width_neg.pt", {**mlp, "width": -6}))
    add(c, "width 10**9", "analyze", ckpt("width_huge.pt", {**mlp, "width": 10**9}))
    add(c, "depth 10**6", "analyze", ckpt("depth_huge.pt", {**mlp, "depth": 10**6}))
    add(c, "in_features 10**12", "analyze", ckpt("in_huge.pt", {**mlp, "in_features": 10**12}))
    add(c, "activation is a list", "analyze", ckpt("act_list.pt", {**mlp, "activation": [1]}))
    add(c, "bias is a string", "analyze", ckpt("bias_str.pt", {**mlp, "bias": "no"}))
    add(c, "quadratic without width", "analyze", ckpt("quad.pt", {"arch": "quadratic",
                                                                  "in_features": 4}))
    add(c, "state_dict is a list", "analyze", ckpt("sd_list.pt", state_=[1]))
    add(c, "state_dict holds a number", "analyze", ckpt("sd_num.pt", state_={**state,
                                                                              "0.weight": 3}))
    add(c, "state_dict key is an int", "analyze", ckpt("sd_key.pt", state_={1: state["0.weight"]}))
    add(c, "weights are integers", "analyze", ckpt("sd_int.pt", state_={
        k: v.long() for k, v in state.items()}))
    add(c, "weights are complex", "analyze", ckpt("sd_complex.pt", state_={
        k: v.to(torch.complex128) for k, v in state.items()}))
    add(c, "weight of wrong shape", "analyze", ckpt("sd_shape.pt", state_={
        **state, "0.weight": torch.zeros(3, 3, dtype=torch.float64)}))
    add(c, "inf weights", "analyze", ckpt("sd_inf.pt", state_={
        **state, "0.weight": torch.full((6, 4), math.inf, dtype=torch.float64)}))
    add(c, "mixed float16/float64 weights", "analyze", ckpt("sd_mixed.pt", state_={
        **state, "0.weight": state["0.weight"].half()}), legal=True)
    add(c, "training is a list", "analyze", ckpt("tr_list.pt", training_=[1]))
    add(c, "training.weight_decay is a string", "analyze", ckpt(
        "tr_wd_str.pt", training_={**training, "weight_decay": "lots"}))
    add(c, "training.weight_decay is negative", "analyze", ckpt(
        "tr_wd_neg.pt", training_={**training, "weight_decay": -1.0}))
    add(c, "training.weight_decay is NaN", "analyze", ckpt(
        "tr_wd_nan.pt", training_={**training, "weight_decay": math.nan}), legal=True)
    add(c, "training.dataset is an int", "analyze", ckpt(
        "tr_data_int.pt", training_={**training, "dataset": 5}))
    add(c, "training.loss is a list", "analyze", ckpt(
        "tr_loss_list.pt", training_={**training, "loss": ["mse"]}))
    add(c, "training.optimizer is a dict", "analyze", ckpt(
        "tr_opt.pt", training_={**training, "optimizer": {"a": 1}}), legal=True)
    add(c, "training.epoch is a string (compare)", "compare", ckpt(
        "tr_epoch.pt", training_={**training, "epoch": "ten"}), ckpt(
        "tr_epoch2.pt", training_={**training, "epoch": 3}))
    add(c, "plain state_dict, --arch mlp, sizes inferred", "analyze", pt("plain.pt", state),
        "--arch", "mlp", "--data", training["dataset"], "--loss", "mse", "--weight-decay",
        "1e-3", legal=True)
    add(c, "plain state_dict with a 1-D weight, --arch mlp", "analyze", pt(
        "plain1d.pt", {"0.weight": torch.zeros(4)}), "--arch", "mlp")
    (root / "garbage.safetensors").write_bytes(b"\xff" * 64)
    add(c, "garbage .safetensors", "analyze", root / "garbage.safetensors")
    (root / "bighdr.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    add(c, "safetensors header length 2**60", "analyze", root / "bighdr.safetensors")
    add(c, "safetensors metadata model not JSON", "analyze", st(
        "meta_bad.safetensors", {"model": "{", "training": json.dumps(training)}))
    add(c, "safetensors metadata model is a JSON list", "analyze", st(
        "meta_list.safetensors", {"model": "[1]", "training": json.dumps(training)}))
    add(c, "safetensors metadata training is a number", "analyze", st(
        "meta_num.safetensors", {"model": json.dumps(mlp), "training": "5"}))
    add(c, "safetensors metadata 100k-deep JSON", "analyze", st(
        "meta_deep.safetensors", {"model": "[" * 100000 + "]" * 100000,
                                  "training": json.dumps(training)}))
    add(c, "stdin: empty", "analyze", "-", stdin=root / "empty.pt")
    add(c, "stdin: garbage", "analyze", "-", stdin=root / "garbage.safetensors")

    # ---- --optimizer-state (an AdamW state_dict for fact_adamw)
    c = "optimizer state"
    model = build_model(mlp).double()
    model.load_state_dict(state)
    adamw = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    model(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
    adamw.step()
    sound = adamw.state_dict()

    def opt_state(name, group=None, entry=None, **top):
        """`sound` with param group 0 and state[0] changed (a None value deletes the key)."""
        content = {"state": {i: dict(v) for i, v in sound["state"].items()},
                   "param_groups": [dict(g) for g in sound["param_groups"]], **top}
        for target, changes in ((content["param_groups"][0], group),
                                (content["state"].get(0, {}), entry)):
            for key, value in (changes or {}).items():
                target.pop(key) if value is None else target.__setitem__(key, value)
        return pt(name, content)

    def with_state(label, path, legal=False, expect=None):
        add(c, label, "analyze", good, "--optimizer-state", path, legal=legal, expect=expect)

    with_state("a sound AdamW state", opt_state("opt_ok.pt"), legal=True)
    with_state("missing file", root / "no_opt.pt")
    with_state("a list", pt("opt_list.pt", [1, 2]), expect="not an optimizer state_dict")
    with_state("empty dict", pt("opt_empty.pt", {}), expect="not an optimizer state_dict")
    with_state("state is a list", pt("opt_state_list.pt", {"state": [],
                                                           "param_groups": []}))
    with_state("no param groups", pt("opt_nogroups.pt", {"state": {}, "param_groups": []}))
    with_state("params is a string", opt_state("opt_params.pt", {"params": "all"}))
    with_state("a parameter index twice", opt_state("opt_twice.pt", {"params": [0, 0, 1]}))
    with_state("fewer parameters than the model", opt_state("opt_few.pt", {"params": [0, 1]}),
               expect="the model has")
    with_state("lr missing", opt_state("opt_nolr.pt", {"lr": None}), expect="lr")
    with_state("β₂ = 1", opt_state("opt_beta.pt", {"betas": (0.9, 1.0)}), expect="[0, 1)")
    with_state("betas a string", opt_state("opt_betas_str.pt", {"betas": "0.9"}))
    with_state("eps 0", opt_state("opt_eps.pt", {"eps": 0.0}), expect="eps")
    with_state("eps NaN", opt_state("opt_eps_nan.pt", {"eps": math.nan}), expect="eps")
    with_state("weight_decay 0", opt_state("opt_wd0.pt", {"weight_decay": 0.0}),
               expect="weight_decay")
    with_state("weight_decay inf", opt_state("opt_wdinf.pt", {"weight_decay": math.inf}))
    with_state("coupled Adam", opt_state("opt_adam.pt", {"decoupled_weight_decay": False}),
               expect="coupled")
    with_state("amsgrad", opt_state("opt_ams.pt", {"amsgrad": True}), expect="amsgrad")
    with_state("exp_avg_sq of the wrong shape", opt_state(
        "opt_shape.pt", entry={"exp_avg_sq": torch.zeros(3, 3, dtype=torch.float64)}),
        expect="shape")
    with_state("exp_avg_sq NaN", opt_state(
        "opt_nan.pt", entry={"exp_avg_sq": torch.full((6, 4), math.nan, dtype=torch.float64)}),
        expect="not finite")
    with_state("exp_avg_sq negative", opt_state(
        "opt_neg.pt", entry={"exp_avg_sq": -torch.ones(6, 4, dtype=torch.float64)}),
        expect="negative")
    with_state("exp_avg_sq integers", opt_state(
        "opt_int.pt", entry={"exp_avg_sq": torch.ones(6, 4, dtype=torch.int64)}))
    with_state("exp_avg_sq missing", opt_state("opt_nosq.pt", entry={"exp_avg_sq": None}))
    with_state("step 0", opt_state("opt_step0.pt", entry={"step": torch.tensor(0.0)}),
               expect="step")
    with_state("step NaN", opt_state("opt_stepnan.pt", entry={"step": torch.tensor(math.nan)}))
    with_state("step a string", opt_state("opt_stepstr.pt", entry={"step": "one"}))
    with_state("state index no group lists", pt("opt_index.pt", {
        "state": {99: sound["state"][0]}, "param_groups": sound["param_groups"]}))
    with_state("pickle that runs code", pt("opt_exploit.pt", {"state": _Exploit(marker),
                                                              "param_groups": []}))
    with_state("a checkpoint, not a state", good, expect="not an optimizer state_dict")

    # ---- options
    c = "options"
    for option, values in (("--alpha", ["nan", "-1", "0", "inf"]),
                           ("--weight-decay", ["-1", "nan", "inf", "-inf"]),
                           ("--batch-size", ["0", "-5"]), ("--max-samples", ["0", "-1"]),
                           ("--dtype", ["float16", "int8"]), ("--device", ["tpu", "cuda:99"]),
                           ("--relations", [",,,", "fact,[/]"]), ("--layers", ["[/]"]),
                           ("--metric", ["r2"]), ("--format", ["xml"]),
                           ("--model", ["{", "[1]", "width", '{"width": 10000000000}',
                                        "[" * 50000]),
                           ("--arch", ["os:", ":", "no.such.module:fn", "mlp:"]),
                           ("--seed", [str(2**70), "-1"]), ("--loss", ["hinge"]),
                           ("--agop-probes", ["7", "0", "-8", "abc", "1e3", "", "9" * 5000]),
                           ("--probe-kind", ["sobol", ""]),
                           ("--probe-seed", ["-1", str(2**40), "x"]),
                           ("--outputs", ["x", "3:1", "99", "1:2:3", "", "-99", "a:b"])):
        for value in values:  # an unused seed and an empty relation list are harmless
            add(c, f"analyze {option} {value[:30]}", "analyze", good, option, value,
                legal=option == "--seed" or value == ",,,")
    add(c, "analyze --weight-decay 0 (warning, legal)", "analyze", good, "--weight-decay", "0",
        "-f", "jsonl", legal=True)
    add(c, "--report into a missing folder (created)", "analyze", good, "--report",
        root / "no" / "r.h5", legal=True)
    add(c, "--report is a folder", "analyze", good, "--report", root)
    os.mkfifo(root / "fifo")  # not /dev/full: an unfixed factcli would rename over it
    add(c, "--report to a FIFO", "analyze", good, "--report", root / "fifo",
        expect="not a regular file")
    add(c, "--report on a disk that fills up", "analyze", good, "--report", root / "full.h5",
        fsize=8192, expect="File too large")
    add(c, "--data-dir missing, mnist", "analyze", good, "--data", "mnist", "--data-dir",
        root / "nowhere")
    add(c, "train --epochs -1", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--epochs", "-1")
    add(c, "train --lr nan", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--lr", "nan")
    add(c, "train --weight-decay -1", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--weight-decay", "-1")
    add(c, "train --weight-decay nan", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--weight-decay", "nan")
    add(c, "train --width 10**9", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--width", str(10**9))
    add(c, "train --depth 10**6", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--depth", str(10**6))
    add(c, "train --width -3", "train", "mlp", "--data", "parity:d=5,k=2,n=20", "--out",
        root / "t.pt", "--width", "-3")
    add(c, "train arch os:system", "train", "os:system", "--data", "parity:d=5,k=2,n=20",
        "--out", root / "t.pt")
    add(c, "train --out a FIFO", "train", "mlp", "--data", "parity:d=5,k=2,n=20",
        "--epochs", "1", "--out", root / "fifo", expect="not a regular file")
    add(c, "train --out on a disk that fills up", "train", "mlp", "--data",
        "parity:d=5,k=2,n=20", "--epochs", "1", "-q", "--out", root / "full.pt", fsize=8192,
        expect="File too large")
    add(c, "rfm --bandwidth nan", "rfm", "--data", "parity:d=5,k=2,n=20", "--bandwidth", "nan")
    add(c, "rfm --bandwidth -1", "rfm", "--data", "parity:d=5,k=2,n=20", "--bandwidth", "-1")
    add(c, "rfm --ridge -1", "rfm", "--data", "parity:d=5,k=2,n=20", "--ridge", "-1")
    add(c, "rfm --ridge nan", "rfm", "--data", "parity:d=5,k=2,n=20", "--ridge", "nan")
    add(c, "rfm --iters -1", "rfm", "--data", "parity:d=5,k=2,n=20", "--iters", "-1")
    add(c, "rfm --power nan", "rfm", "--data", "parity:d=5,k=2,n=20", "--power", "nan")
    add(c, "rfm --val-frac 2", "rfm", "--data", "parity:d=5,k=2,n=20", "--val-frac", "2")
    add(c, "usage: unknown option", "analyze", good, "--bogus")
    add(c, "usage: bad float", "analyze", good, "--alpha", "x")
    add(c, "usage: missing argument", "analyze")
    add(c, "usage: unknown command", "analyse")

    # ---- dataset specs (through `fact rfm --iters 0`: the data is made first)
    c = "dataset specs"
    for spec, expect in (
            ("parity:n=1000000000000", "memory"), ("parity:n=-5", ">= 1"),
            ("parity:d=0", ">= 1"), ("parity:d=-1", ">= 1"), ("parity:d=1000000000", "memory"),
            ("parity:n_test=-3", ">= 0"), ("parity:k=0", ">= 1"),
            ("modular:p=1000000", "memory"), ("modular:p=1", ">= 2"), ("modular:p=0", ">= 2"),
            ("modular:p=-3", ">= 2"), ("modular:op=div,p=10", "prime"),
            ("modular:train_frac=nan", "finite"), ("modular:op=pow", "unknown modular op"),
            ("mnist-10k:n=-5", "in 1..8000"), ("mnist-10k:n_test=-1", "in 0..2000"),
            ("mnist-10k:split=abc", "split must be"), ("mnist-10k:n=100000000", "in 1..8000"),
            ("teacher-linear:d=1000000000", "memory"), ("teacher-linear:n=-1", ">= 1"),
            ("teacher-linear:c=0", ">= 1"), ("teacher-linear:n=10000000000", "memory"),
            ("separation:samples=-1", ">= 0"), ("separation:tau=nan", "finite"),
            ("separation:tau=inf", "finite"), ("separation:samples=1000000000000", "memory"),
            ("separation:p=nan", "finite"), ("parity:n=5,n=6", "twice"),
            ("parity:=5", "expected key=value"), ("parity:d=1e3", "not a valid int"),
            ("parity:d=5,k=2,n=20,seed=-1", ">= 0"), ("sklearn:name=[/]", "[/]"),
            ("[/]", "unknown dataset '[/]'"), ("", "unknown dataset"),
            ("parity:d=5,k=2,n=20,seed=99999999999999999999", None),
            ("parity:d=5,,k=2,n=20", None), ("modular:op=div,p=7", None)):
        add(c, f"--data {spec[:40] or '(empty)'}", "rfm", "--data", spec, "--iters", "0",
            "-f", "jsonl", legal=expect is None, expect=expect)

    # ---- dataset files
    c = "dataset files"

    def npz(name, **arrays):
        path = root / name
        np.savez(path, **arrays)
        return path

    x4 = np.random.default_rng(0).standard_normal((40, 4))
    y2 = np.random.default_rng(1).standard_normal((40, 2))
    files = {
        "npz: ok (float64)": (npz("ok.npz", x_train=x4, y_train=y2), True),
        "npz: no y_train": (npz("noy.npz", x_train=x4), False),
        "npz: y_train of another length": (npz("len.npz", x_train=x4, y_train=y2[:7]), False),
        "npz: NaN targets": (npz("nany.npz", x_train=x4, y_train=np.full((40, 2), np.nan)),
                             False),
        "npz: inf inputs": (npz("infx.npz", x_train=np.full((40, 4), np.inf), y_train=y2), False),
        "npz: no rows": (npz("empty.npz", x_train=np.zeros((0, 4)), y_train=np.zeros((0, 2))),
                         False),
        "npz: string inputs": (npz("str.npz", x_train=np.array(["a"] * 40), y_train=y2), False),
        "npz: complex inputs": (npz("cplx.npz", x_train=x4 + 1j, y_train=y2), False),
        "npz: 0-d inputs": (npz("zerod.npz", x_train=np.float64(3.0), y_train=y2), False),
        "npz: 3-D targets": (npz("y3d.npz", x_train=x4, y_train=np.zeros((40, 2, 2))), False),
        "npz: label 10**9": (npz("biglabel.npz", x_train=x4, y_train=np.full(40, 10**9)), False),
        "npz: negative labels": (npz("neglabel.npz", x_train=x4, y_train=-np.ones(40)), False),
        "npz: x_test of another width": (npz("xtest.npz", x_train=x4, y_train=y2,
                                             x_test=np.zeros((5, 3)), y_test=y2[:5]), False),
        "npz: object array": (npz("obj.npz", x_train=np.array([{}, 1], dtype=object),
                                  y_train=y2), False),
    }
    with zipfile.ZipFile(root / "bomb.npz", "w") as archive:
        archive.writestr("x_train.npy", _npy_header_only((10**6, 10**6)))
        archive.writestr("y_train.npy", _npy_header_only((10**6,)))
    files["npz: header declares 10**6×10**6"] = (root / "bomb.npz", False)
    (root / "notzip.npz").write_bytes(b"PK\x03\x04garbage")
    files["npz: not a zip"] = (root / "notzip.npz", False)
    (root / "bad.csv").write_text("a,b\n1,x\n")
    files["csv: text cell"] = (root / "bad.csv", False)
    (root / "blank.csv").write_text("")
    files["csv: empty"] = (root / "blank.csv", False)
    (root / "one.csv").write_text("1\n2\n")
    files["csv: one column"] = (root / "one.csv", False)
    (root / "nan.csv").write_text("1,2,nan\n3,4,1\n")
    files["csv: NaN target"] = (root / "nan.csv", False)
    (root / "ok.csv").write_text("".join(f"{i % 3},{i % 5},{i % 7},{i % 4},{i % 2}\n"
                                         for i in range(30)))
    files["csv: ok"] = (root / "ok.csv", True)
    (root / "data.txt").write_text("1,2\n")
    files["unsupported suffix"] = (root / "data.txt", False)
    for label, (path, legal) in files.items():
        add(c, label, "analyze", pt(f"plain_{path.stem}.pt", state), "--arch", "mlp",
            "--data", f"file:{path}", "--loss", "mse", "--weight-decay", "1e-3", legal=legal)
    add(c, "csv: target=99", "analyze", good, "--data", f"file:{root / 'ok.csv'},target=99")

    # token windows (.npy, .npz) and text: for a causal LM
    def lm(name, vocab):
        spec = {"arch": "transformer", "vocab": vocab, "context": 4, "out_features": vocab,
                "d_model": 4, "heads": 2, "depth": 1, "output": "all"}
        weights = {k: v.double() for k, v in build_model(spec).state_dict().items()}
        save_checkpoint(root / name, Checkpoint(spec, weights, {"loss": "next_token",
                                                                "weight_decay": 1e-3}))
        return root / name

    lm8, lm256 = lm("lm8.pt", 8), lm("lm256.pt", 256)
    ids = np.random.default_rng(2).integers(0, 8, (6, 5))
    ragged = np.ones((6, 4), dtype=np.int8)
    ragged[1, 2:], ragged[2, :] = 0, 0

    def npy(name, array):
        np.save(root / name, array)
        return root / name

    (root / "bomb.npy").write_bytes(_npy_header_only((10**6, 10**6)))
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "empty.txt").write_bytes(b"")
    (root / "short.txt").write_bytes(b"abc")
    (root / "book.txt").write_bytes(b"It was the best of times, it was the worst of times.\n" * 2)
    for label, path, expect in (
            ("tokens.npy: ok", npy("ok_tokens.npy", ids), None),
            ("tokens.npy: float ids", npy("float_tokens.npy", ids.astype(float)), "integer"),
            ("tokens.npy: negative ids", npy("neg_tokens.npy", ids - 3), "negative token id"),
            ("tokens.npy: ids >= the model's vocabulary 8", npy("big_tokens.npy", ids + 5),
             "the model embeds ids 0..7"),
            ("tokens.npy: 1-D", npy("flat_tokens.npy", ids[0]), "(n, T+1)"),
            ("tokens.npy: header declares 10**6×10**6", root / "bomb.npy", "memory"),
            ("tokens.npy: not an .npy", root / "garbage.npy", "not a readable .npy"),
            ("tokens.npz: ok with a ragged attention mask", npz(
                "ok_tokens.npz", x_train=ids[:, :-1], y_train=ids[:, 1:], attention_mask=ragged),
             None),
            ("tokens.npz: attention mask of 2s", npz(
                "mask2.npz", x_train=ids[:, :-1], y_train=ids[:, 1:],
                attention_mask=2 * ragged), "0 (ignore) and 1"),
            ("tokens.npz: target -7", npz("minus7.npz", x_train=ids[:, :-1],
                                          y_train=ids[:, 1:] - 7), "-100")):
        add(c, label, "analyze", lm8, "--data", f"file:{path}", "--relations", "fact",
            legal=expect is None, expect=expect)
    for label, spec, expect in (
            ("text: ok (bytes, T=4)", f"text:{root / 'book.txt'},T=4", None),
            ("text: a directory", f"text:{root}", "not a regular file"),
            ("text: missing file", f"text:{root / 'none.txt'}", "not found"),
            ("text: empty file", f"text:{root / 'empty.txt'},T=4", "holds 0 bytes"),
            ("text: shorter than T+1", f"text:{root / 'short.txt'},T=4", "at least 5"),
            ("text: tokenizer=gpt2", f"text:{root / 'book.txt'},tokenizer=gpt2",
             "unknown tokenizer"),
            ("text: stride=0", f"text:{root / 'book.txt'},T=4,stride=0", "stride"),
            ("text: T=10**12", f"text:{root / 'book.txt'},T=1000000000000", "option T"),
            ("text: T beyond the model's context 4", f"text:{root / 'book.txt'},T=8",
             "exceed the context")):
        add(c, label, "analyze", lm256, "--data", spec, "--relations", "fact",
            legal=expect is None, expect=expect)
    add(c, "--loss next_token on one label per sample", "analyze", good, "--loss", "next_token",
        "--data", "modular:p=5", expect="next-token targets")
    add(c, "csv: header=-1", "analyze", good, "--data", f"file:{root / 'ok.csv'},header=-1")

    # idx (mnist) folders
    def idx_folder(name, images, labels, test_images=None, test_labels=None):
        folder = root / name
        folder.mkdir(exist_ok=True)
        for base, (kind, dims, body) in zip(
                ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
                [images, labels, test_images or images, test_labels or labels]):
            _idx(folder / base, kind, dims, body)
        return folder

    torch.manual_seed(0)
    for name, fan_in in (("idx.pt", 4), ("cifar.pt", 3072)):
        spec = {**mlp, "in_features": fan_in, "out_features": 10}
        weights = {k: v.double() for k, v in build_model(spec).state_dict().items()}
        save_checkpoint(root / name, Checkpoint(spec, weights, training))
    img = (8, (3, 2, 2), bytes(12))
    lab = (8, (3,), bytes([1, 2, 3]))
    for label, folder in (
            ("idx: ok", idx_folder("idx_ok", img, lab)),
            ("idx: wrong magic (float type)", idx_folder("idx_magic", (13, (3, 2, 2), bytes(48)),
                                                       lab)),
            ("idx: truncated", idx_folder("idx_trunc", (8, (3, 2, 2), bytes(5)), lab)),
            ("idx: declares 2**32-1 images", idx_folder("idx_huge", (8, (2**32 - 1, 28, 28),
                                                                     bytes(10)), lab)),
            ("idx: 200 dimensions", idx_folder("idx_dims", (8, (1,) * 200, b"\x00"), lab)),
            ("idx: labels count ≠ images", idx_folder("idx_count", img, (8, (2,), bytes(2)))),
            ("idx: label 200", idx_folder("idx_label", img, (8, (3,), bytes([200] * 3)))),
            ("idx: labels are 2-D", idx_folder("idx_lab2d", img, (8, (3, 1), bytes(3))))):
        add(c, label, "analyze", root / "idx.pt", "--data", "mnist", "--data-dir", folder,
            legal=label == "idx: ok")

    def cifar(name, batches, binary=False):
        folder = root / name / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for base, batch in zip(names, batches):
            if binary:
                (folder / (base + ".bin")).write_bytes(batch)
            else:
                with open(folder / base, "wb") as handle:
                    pickle.dump(batch, handle, protocol=2)
        return root / name

    ok_batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}
    for label, folder in (
            ("cifar: ok", cifar("cifar_ok", [ok_batch] * 6)),
            ("cifar: pickle runs code", cifar("cifar_code", [_Exploit(marker)] * 6)),
            ("cifar: batch is a list", cifar("cifar_list", [[1, 2]] * 6)),
            ("cifar: data is 1-D", cifar("cifar_1d", [{b"data": np.zeros(10, np.uint8),
                                                      b"labels": [1]}] * 6)),
            ("cifar: labels ≠ rows", cifar("cifar_count", [{b"data": np.zeros((2, 3072), np.uint8),
                                                            b"labels": [1]}] * 6)),
            ("cifar: label 99", cifar("cifar_label", [{b"data": np.zeros((2, 3072), np.uint8),
                                                       b"labels": [99, 1]}] * 6)),
            ("cifar: labels are strings", cifar("cifar_str", [{b"data": np.zeros((2, 3072),
                                                                                 np.uint8),
                                                               b"labels": ["a", "b"]}] * 6)),
            ("cifar: .bin of a wrong size", cifar("cifar_bin", [bytes(100)] * 6, binary=True)),
            ("cifar: .bin label 77", cifar("cifar_binlab", [bytes([77]) + bytes(3072)] * 6,
                                           binary=True))):
        add(c, label, "analyze", root / "cifar.pt", "--data", "cifar10", "--data-dir", folder,
            legal=label == "cifar: ok", expect=None if label == "cifar: ok" else "cifar")

    # ---- reports
    c = "reports"

    def report(name, build):
        return _h5(root / name, build)

    ok_report = report("ok.h5", _report)
    add(c, "show: ok", "show", ok_report, legal=True)
    add(c, "show --matrix: ok", "show", ok_report, "--matrix", "0", "nfm", legal=True)

    def huge(handle):
        _report(handle)
        del handle["layers/0/nfm"]
        handle["layers/0"].create_dataset("nfm", shape=(100000, 100000), dtype="f8",
                                          chunks=(100, 100), compression="gzip")

    big = report("huge.h5", huge)
    add(c, "show: matrix declared 100000×100000 (the table reads no matrix)", "show", big,
        legal=True)
    add(c, "show --matrix of the declared 100000×100000", "show", big, "--matrix", "0", "nfm")
    add(c, "compare: report with the 100000×100000 matrix", "compare", big, legal=True)
    add(c, "compare --features: the 100000×100000 matrix", "compare", "--features", big, big)
    add(c, "not HDF5 (text)", "show", root / "bad.csv")
    (root / "half.h5").write_bytes(ok_report.read_bytes()[:300])
    add(c, "truncated HDF5", "show", root / "half.h5")
    add(c, "no format attribute", "show", report("nofmt.h5", lambda h: h.create_group("x")))
    add(c, "format is an int", "show", report("fmtint.h5", lambda h: _report(h, format=3)))
    add(c, "model attribute not JSON", "show", report("json.h5", lambda h: _report(h, model="{")))
    add(c, "warnings attribute 100k-deep JSON", "show", report(
        "deep.h5", lambda h: _report(h, warnings="[" * 100000 + "]" * 100000)))
    add(c, "warnings attribute a number", "show", report(
        "warnnum.h5", lambda h: _report(h, warnings="5")))
    add(c, "weight_decay attribute a string", "show", report(
        "wdstr.h5", lambda h: _report(h, weight_decay="x")))
    add(c, "alpha attribute an array", "show", report(
        "alpha.h5", lambda h: _report(h, alpha=np.arange(3.0))))

    def edit(name, change):
        def build(handle):
            _report(handle)
            change(handle)
        return report(name, build)

    def set_attr(path, key, value):
        return lambda h: h[path].attrs.__setitem__(key, value)

    add(c, "in_features a string", "show", edit("infs.h5", set_attr("layers/0", "in_features",
                                                                     "x")))
    add(c, "in_features negative", "show", edit("infn.h5", set_attr("layers/0", "in_features",
                                                                      -3)))
    add(c, "stationarity a string", "show", edit("stat.h5", set_attr("layers/0", "stationarity",
                                                                      "low")))
    add(c, "name attribute an int", "show", edit("name.h5", set_attr("layers/0", "name", 5)))
    add(c, "layers is a dataset", "show", edit("layersds.h5", lambda h: (
        h.__delitem__("layers"), h.create_dataset("layers", data=[1]))))
    add(c, "a layer is a dataset", "show", edit("layerds.h5", lambda h: (
        h["layers"].create_dataset("1", data=[1]))))
    add(c, "metrics is a plain array", "show", edit("metrics.h5", lambda h: (
        h.__delitem__("metrics"), h.create_dataset("metrics", data=np.zeros(3)))))
    add(c, "metrics pearson is text", "show", edit("metrics_txt.h5", lambda h: (
        h.__delitem__("metrics"), h.create_dataset("metrics", data=np.array(
            [(b"0", b"fact", b"x", 0.0, 0.0)], dtype=[("layer", "S3"), ("relation", "S5"),
                                                     ("pearson", "S3"), ("cosine", "f8"),
                                                     ("rel_err", "f8")])))))
    add(c, "matrix is 1-D", "show", edit("m1d.h5", lambda h: (
        h.__delitem__("layers/0/fact"), h["layers/0"].create_dataset("fact", data=np.zeros(3)))),
        "--matrix", "0", "fact")
    add(c, "matrix holds text", "show", edit("mtxt.h5", lambda h: (
        h.__delitem__("layers/0/fact"), h["layers/0"].create_dataset("fact", data=[b"a"]))),
        "--matrix", "0", "fact")
    add(c, "matrix holds NaN (legal: shown as nan)", "show", edit("mnan.h5", lambda h: (
        h.__delitem__("layers/0/fact"), h["layers/0"].create_dataset(
            "fact", data=np.full((3, 3), np.nan)))), "--matrix", "0", "fact", legal=True)

    def factored(name, left, right, in_features=3):
        """nfm stored as factors (a group with left, right), as a --max-dense report holds it."""
        def change(handle):
            del handle["layers/0/nfm"]
            handle["layers/0"].attrs["in_features"] = in_features
            group = handle["layers/0"].create_group("nfm")
            for key, value in (("left", left), ("right", right)):
                if isinstance(value, tuple):  # declared, never written
                    group.create_dataset(key, shape=value, dtype="f8", chunks=(1000, 1))
                elif value is not None:
                    group.create_dataset(key, data=value)
        return edit(name, change)

    add(c, "factored matrix: ok", "show", factored("fok.h5", np.ones((3, 2)), np.ones((3, 2))),
        "--matrix", "0", "nfm", legal=True)
    add(c, "factored matrix without right", "show", factored(
        "fnoright.h5", np.ones((3, 2)), None), "--matrix", "0", "nfm", expect="left, right")
    add(c, "factors of another side than the layer's", "show", factored(
        "fside.h5", np.ones((4, 2)), np.ones((4, 2))), "--matrix", "0", "nfm", expect="3×3")
    add(c, "factors of different ranks", "show", factored(
        "frank.h5", np.ones((3, 2)), np.ones((3, 1))), "--matrix", "0", "nfm", expect="3×r")
    add(c, "factor holds NaN", "show", factored(
        "fnan.h5", np.full((3, 2), np.nan), np.ones((3, 2))), "--matrix", "0", "nfm",
        expect="NaN")
    add(c, "factor is 1-D", "show", factored("f1d.h5", np.ones(3), np.ones((3, 2))),
        "--matrix", "0", "nfm", expect="2-D")
    add(c, "factor holds text", "show", factored("ftxt.h5", [b"a", b"b", b"c"], np.ones((3, 2))),
        "--matrix", "0", "nfm")
    add(c, "factors declared 10⁹×10⁹ rank 2", "show", factored(
        "fhuge.h5", (10**9, 2), (10**9, 2), in_features=10**9), "--matrix", "0", "nfm")
    add(c, "factored 100000×100000 (rank 1) past --max-bytes", "show", factored(
        "fbig.h5", (100000, 1), (100000, 1), in_features=100000), "--matrix", "0", "nfm",
        expect="--max-bytes")
    add(c, "--max-bytes 0", "show", ok_report, "--matrix", "0", "nfm", "--max-bytes", "0")
    add(c, "rfm kind without history", "show", report("rfm.h5", lambda h: _report(h, kind="rfm")))
    add(c, "rfm history is a plain array", "show", edit("rfmh.h5", lambda h: (
        h.attrs.__setitem__("kind", "rfm"), h.create_dataset("history", data=np.zeros(3)))))
    wide = edit("wide.h5", lambda h: (h.__delitem__("layers/0/nfm"), h["layers/0"].create_dataset(
        "nfm", data=np.eye(64))))  # 32 KiB as .npy; stdout and stderr stay far below 8 KiB
    add(c, "show --matrix --out on a disk that fills up", "show", wide, "--matrix", "0",
        "nfm", "--out", root / "full.npy", fsize=8192, expect="cannot write")
    add(c, "show --matrix [/] [/]", "show", ok_report, "--matrix", "[/]", "[/]")

    # ---- stdin JSON lines and --require
    c = "stdin JSON"

    def stdin_file(name, text):
        path = root / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    row = {"checkpoint": "a", "layer": "0", "relation": "fact", "pearson": 0.9, "cosine": 0.9,
           "rel_err": 0.1, "stationarity": 0.1}
    for label, text, legal in (
            ("ok rows", json.dumps(row) + "\n", True),
            ("100k-deep JSON", "{\"a\": " + "[" * 100000 + "]" * 100000 + "}\n", False),
            ("line not JSON", "{oops\n", False),
            ("a JSON list line", json.dumps(row) + "\n[1]\n", False),
            ("layer is a dict", json.dumps({**row, "layer": {"x": 1}}) + "\n", False),
            ("pearson is a string", json.dumps({**row, "pearson": "high"}) + "\n", False),
            ("pearson is 1e999", json.dumps(row).replace("0.9,", "1e999,", 1) + "\n", False),
            ("relation named [/] (shown as text)", json.dumps({**row, "relation": "[/]"}) + "\n",
             True),
            ("non-UTF-8 bytes", b"\xff\xfe\x00garbage\n", False),
            ("paths that do not exist", "nope1.pt\nnope2.h5\n", False),
            ("empty", "", False),
            ("a 10 MB line", "{\"layer\": \"" + "x" * 10_000_000 + "\"}\n", False)):
        add(c, label, "compare", "-", stdin=stdin_file(f"stdin_{len(cases)}.txt", text),
            legal=legal)
    add(c, "stdin twice", "compare", "-", "-", stdin=root / "empty.pt")

    c = "--require"
    rows_file = stdin_file("rows.jsonl", json.dumps(row) + "\n")
    for expression, legal in (("fact.pearson >= 0.5", True), ("[/]", False),
                              ("fact.pearson >", False), ("nope.pearson > 0", False),
                              ("1 / 0 > 0", "check"), ("fact.pearson / 0 > 0", "check"),
                              ("fact.pearson ** 2 > 0", False), ("1e999999 > fact.pearson", False),
                              ("(" * 5000 + "1" + ")" * 5000 + " > 0", False),
                              ("-" * 5000 + "1 > 0", False), ("fact.pearson > 0 and", False),
                              ("", False), ("abs(fact.pearson > 0", False)):
        add(c, f"--require {expression[:30] or '(empty)'}", "compare", "-", "--require",
            expression, stdin=rows_file, legal=legal is True,
            codes=(1,) if legal == "check" else (2,))  # x/0 is NaN: the check fails
    return cases


# ------------------------------------------------------------------------------------ runner

_CHILD = r"""
import json, os, resource, signal, sys, traceback
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]  # as the `fact` script
cases, workdir, cwd = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
marker, victim = os.path.join(cwd, "pwned"), os.path.join(cwd, "victim")
import torch, numpy, h5py  # noqa: F401  imported once; each case runs in a forked child
from factcli.cli import main
results = []
for index, case in enumerate(cases):
    out, err = os.path.join(workdir, f"{index}.out"), os.path.join(workdir, f"{index}.err")
    pid = os.fork()
    if pid == 0:
        os.chdir(cwd)
        fd = os.open(case["stdin"] or os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.argv = ["fact", *case["args"]]
        signal.alarm(120)
        if case["fsize"]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], case["fsize"]))
        code = 0
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    ran_code = os.path.exists(marker) or not os.path.isdir(victim)
    if os.path.exists(marker):
        os.remove(marker)
    os.makedirs(victim, exist_ok=True)
    results.append({"rc": code, "maxrss_kb": usage.ru_maxrss, "ran_code": ran_code,
                    "stderr": open(err, errors="replace").read()[-4000:]})
print(json.dumps(results))
"""


def run_cases(cases: list[Case], folder: Path, cwd: Path, limit: int = LIMIT,
              python: str = sys.executable, env: dict | None = None) -> list[dict]:
    """Run every case in `cwd` under `limit` bytes of address space; one result per case."""
    spec = folder / "cases.json"
    spec.write_text(json.dumps([asdict(case) for case in cases]))
    work = folder / "work"
    work.mkdir(exist_ok=True)
    environment = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1",
                   "PYTHONWARNINGS": "ignore", **(env or {})}
    environment.pop("FACT_DEBUG", None)
    done = subprocess.run(
        [python, "-c", _CHILD, str(spec), str(work), str(cwd)], capture_output=True, text=True,
        env=environment, timeout=3000,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    if done.returncode != 0:
        raise RuntimeError(f"the case runner failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def verdict(case: Case, result: dict) -> str:
    """'ok' when the outcome is clean, else what is wrong with it."""
    lines = result["stderr"].strip().splitlines()
    if result["ran_code"]:
        return "RAN CODE"
    if "Traceback" in result["stderr"]:
        return "traceback"
    if result["rc"] == 0:
        return "ok" if case.legal else "exit 0 on bad input"
    if result["rc"] not in case.codes:
        return f"exit {result['rc']}"
    if len(lines) != 1 and result["rc"] == 2:  # exit 1 lists each violated --require row
        return f"{len(lines)} stderr lines"
    if lines[0].startswith("error: ") and lines[0].split(":")[1].strip() in _LIBRARY_ERRORS:
        return "unvalidated library error"
    if case.expect and case.expect not in lines[0]:
        return "other error than expected"
    return "ok"


_LIBRARY_ERRORS = ("RuntimeError", "ValueError", "TypeError", "KeyError", "IndexError",
                   "AttributeError", "OverflowError", "ZeroDivisionError", "RecursionError",
                   "OSError", "MemoryError", "UnicodeDecodeError", "AssertionError",
                   "UnpicklingError", "SafetensorError")


def main() -> None:
    import argparse
    import collections
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--pythonpath", help="import factcli from here (e.g. an older tree)")
    parser.add_argument("--details", action="store_true", help="one line per case")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        cases = make_cases(folder / "files")
        env = {"PYTHONPATH": options.pythonpath} if options.pythonpath else None
        results = run_cases(cases, folder, folder / "files", python=options.python, env=env)
        ran = sum(result["ran_code"] for result in results)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case, result in zip(cases, results):
        outcome = verdict(case, result)
        table[case.category][outcome] += 1
        if options.details:
            last = (result["stderr"].strip().splitlines() or [""])[-1][:150]
            print(f"{outcome:28s} rc={result['rc']:<3} rss={result['maxrss_kb'] // 1024:>5} MB"
                  f"  [{case.category}] {case.label} :: {last}")
    print(f"{'category':18s} {'cases':>5}  outcomes")
    for category, counts in table.items():
        print(f"{category:18s} {sum(counts.values()):5d}  "
              + ", ".join(f"{k}: {v}" for k, v in counts.most_common()))
    print(f"total {len(cases)} cases; cases after which the marker existed or the rmtree "
          f"victim was gone: {ran}")


if __name__ == "__main__":
    main()
