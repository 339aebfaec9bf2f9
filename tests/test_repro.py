"""fact repro: verdict rules, the paper's values file, resumable steps, and the findings run
end to end at tiny (--smoke) settings, fig11 also at --quick with its verdicts."""

from __future__ import annotations

import json
import math
import sys

import pytest

from factcli.errors import FactError
from factcli.repro import FINDINGS, reproduce
from factcli.repro.findings import circulant_profile, spearman_correlation
from factcli.repro.runner import Runner, Step
from factcli.repro.verdict import judge, paper_entry, paper_values, quantity
from tests.helpers import fact_inprocess


def test_rules():
    within = {"paper": 0.5, "rule": {"op": "within", "tol": 0.05}}
    assert judge(within, 0.54) == "reproduced"
    assert judge(within, 0.56) == "not reproduced"
    least = {"paper": "text", "rule": {"op": "at_least", "than": 0.99}}
    assert judge(least, 0.995) == "reproduced"
    assert judge(least, 0.98) == "not reproduced"
    most = {"paper": "text", "rule": {"op": "at_most", "than": 0.3}}
    assert judge(most, 0.1) == "reproduced" and judge(most, 0.4) == "not reproduced"
    assert judge(least, math.nan) == "not reproduced"  # unmeasured is never a success
    assert judge(None, 1.0) == "no paper value"


def test_paper_values_file():
    values = paper_values()
    assert values["sec6/fact_cosine.tau=0.1"]["paper"] == 0.994
    assert [values[f"table1/mean_acc.{m}"]["paper"] for m in ("fact", "fact-geo", "nfa",
                                                               "kernel")] == [85.22, 84.99,
                                                                              85.10, 83.71]
    for key, entry in values.items():
        finding = key.split("/")[0]
        assert finding in FINDINGS, key
        assert entry["source"] and entry["rule"]["op"] in ("within", "at_least", "at_most")
        if entry["rule"]["op"] == "within":
            assert isinstance(entry["paper"], float)
    assert paper_entry("fig11", "fact_pearson.L=4")["rule"]["than"] == 0.99  # a pattern
    assert paper_entry("wd", "fact_pearson.lambda=0.001,layer=0") is None
    row = quantity("wd", "x", math.nan)
    assert row["verdict"] == "no paper value" and row["measured"] is None


def test_spearman_and_circulant_profile():
    import numpy as np

    a = np.arange(9.0).reshape(3, 3)
    assert spearman_correlation(a, a ** 3) == pytest.approx(1.0)
    assert spearman_correlation(a, -a) == pytest.approx(-1.0)
    p = 5
    M = np.zeros((2 * p, 2 * p))
    for i in range(p):
        for j in range(p):
            M[i, p + j] = (j - i) % p
    assert circulant_profile(M, p).tolist() == [0, 1, 2, 3, 4]


def test_steps_resume_and_fail_in_one_line(tmp_path):
    runner = Runner(tmp_path)
    step = Step.of("rfm", "--data", "sklearn:name=iris", "--iters", 1, "--format", "jsonl",
                   stdout="iris.jsonl")
    runner.run(step)
    first = (tmp_path / "iris.jsonl").read_text()
    assert [json.loads(line)["iteration"] for line in first.splitlines()] == [0, 1]
    runner.run(step)
    assert runner.ran == [step.line] and runner.reused == [step.line]
    (tmp_path / "iris.jsonl").unlink()  # a missing output makes the step run again
    runner.run(step)
    assert len(runner.ran) == 2
    changed = Step.of(*step.argv[:-2], "--format", "tsv", stdout="iris.jsonl")
    assert changed.key != step.key and not runner.done(changed)
    with pytest.raises(FactError, match=r"step failed \(exit 2\).*unknown sklearn set"):
        runner.run(Step.of("rfm", "--data", "sklearn:name=nope", stdout="bad.jsonl"))
    assert not (tmp_path / "bad.jsonl").exists()


def test_a_step_reruns_when_its_input_changes(tmp_path):
    """Reuse is keyed on the input files' bytes too, not only on the command line: a step
    whose checkpoint or data was rewritten (a re-trained model) must run again."""
    import numpy as np

    def write(labels):
        np.savez(tmp_path / "d.npz", x_train=np.arange(12.0).reshape(6, 2),
                 y_train=np.array(labels))

    runner = Runner(tmp_path)
    step = Step.of("data", "show", "file:d.npz", stdout="show.txt", inputs=("d.npz",))
    write([0, 1, 0, 1, 0, 1])
    runner.run(step)
    first = (tmp_path / "show.txt").read_text()
    write([0, 1, 0, 1, 0, 1])  # the same bytes written again: still reused
    runner.run(step)
    assert runner.ran == [step.line] and runner.reused == [step.line]
    write([0, 1, 2, 0, 1, 2])  # new content under the same name and command: runs again
    assert not runner.done(step)
    runner.run(step)
    assert len(runner.ran) == 2 and "n_classes: 3" in (tmp_path / "show.txt").read_text()
    assert "n_classes: 2" in first
    marker = tmp_path / ".steps" / f"{step.key}.done"
    assert list(json.loads(marker.read_text())["inputs"]) == ["d.npz"]
    marker.write_text('{"command": ')  # an interrupted marker write: not done
    assert not runner.done(step)


def test_unknown_findings(tmp_path):
    with pytest.raises(FactError, match="unknown finding"):
        reproduce(["fig99"], tmp_path)
    result = fact_inprocess("repro", "--list")
    assert result.exit_code == 0 and all(name in result.stdout for name in FINDINGS)
    result = fact_inprocess("repro", "fig11", "--quick", "--full", "--out", tmp_path)
    assert result.exit_code == 2 and "choose one of" in result.output


def _rows(root):
    return [json.loads(line) for line in (root / "summary.jsonl").read_text().splitlines()]


def test_every_finding_runs_at_smoke_settings(tmp_path):
    names = [n for n in FINDINGS if n != "fig2-cifar10"]  # needs data that is not shipped
    rows = reproduce(names, tmp_path, mode="smoke")
    assert {r["finding"] for r in rows} == set(names)
    for row in rows:
        assert set(row) >= {"finding", "quantity", "paper", "measured", "verdict"}
        assert row["verdict"] in ("reproduced", "not reproduced", "no paper value")
    assert _rows(tmp_path) == rows  # the summary holds every finding run into the folder
    assert "| fig11 | alpha_star.L=2 |" in (tmp_path / "summary.md").read_text()
    script = (tmp_path / "fig8" / "commands.sh").read_text()
    assert "fact train mlp" in script and "--save-every 5" in script
    assert script.startswith("#!/bin/sh") and "fact analyze fig8/mlp_epoch05.pt" in script

    def timing(name):
        return json.loads((tmp_path / name / "timing.json").read_text())

    assert timing("fig9-10")["steps_run"] == 1  # fig8's run and analyses reused; its figure
    said = []
    again = reproduce(["fig11"], tmp_path, mode="smoke", say=said.append)  # nothing re-runs
    assert len(said) == 9 and all(line.startswith("reused  fact ") for line in said)
    assert timing("fig11")["steps_run"] == 9  # the timing of the run that did the work
    assert again == [r for r in rows if r["finding"] == "fig11"]
    assert len(_rows(tmp_path)) == len(rows)
    _figures_are_drawn_and_linked(tmp_path)
    for name in ("cnn", "transformer"):  # beyond the paper: every weight matrix, FACT vs NFA
        per_layer = [r["quantity"].split(".layer=") for r in rows
                     if r["finding"] == name and ".layer=" in r["quantity"]]
        table = (tmp_path / name / "pearson.md").read_text()
        assert per_layer and all(f"| {layer} |" in table for _, layer in per_layer)
        assert {q for q, _ in per_layer} == {"fact_pearson", "nfa_pearson", "stationarity",
                                             "fact_minus_nfa", "fact_minus_enfa"}
    layers = {f"{finding}/{r['quantity']}" for r in rows for finding in ("cnn", "transformer")
              if r["finding"] == finding and r["quantity"].startswith("fact_minus_nfa.")}
    assert layers == {"cnn/fact_minus_nfa.layer=" + name for name in (
        "features.0", "features.3", "classifier.0", "classifier.2")} | {
        "transformer/fact_minus_nfa.layer=" + name for name in (
            "embed", "pos", "blocks.0.attn.in_proj:q", "blocks.0.attn.in_proj:k",
            "blocks.0.attn.in_proj:v", "blocks.0.attn.out_proj", "blocks.0.mlp.0",
            "blocks.0.mlp.2", "head")}
    judged = {r["quantity"].split(".layer=")[0] for r in rows
              if r["finding"] == "transformer" and r["verdict"] != "no paper value"}
    assert judged == {"fact_pearson", "fact_minus_nfa", "fact_minus_enfa"}
    lines = (tmp_path / "transformer" / "commands.sh").read_text().splitlines()
    main, twin = (next(line for line in lines if f"--out transformer/{name}.pt" in line)
                  for name in ("transformer", "prelayernorm"))
    assert "--norm none" in main and "--polish" in main and "--norm" not in twin
    stream = next(r for r in rows if r["quantity"] == "stream_writers.cosine")
    assert abs(stream["measured"]) < 1e-3  # the pre-LN twin: ∇L_data ⊥ θ (scale invariance)


def _figures_are_drawn_and_linked(root):
    """Each figure is a `fact plot` step of its finding's commands.sh, a PNG in FINDING/, and
    linked from summary.md; without matplotlib one notice and no figure, the rest as before."""
    pytest.importorskip("matplotlib")
    summary = (root / "summary.md").read_text()
    expected = {"fig11": "alpha_L4", "sec6": "matrices_tau0.1", "fig2-mnist": "bars",
                "fig8": "epochs", "fig9-10": "epochs", "fig3": "rfm_k2", "fig4": "rfm_k3",
                "fig5": "rfm", "cnn": "bars", "transformer": "bars"}
    for finding, name in expected.items():
        png = root / finding / f"{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG"), png
        assert f"]({finding}/{name}.png)" in summary
        script = (root / finding / "commands.sh").read_text()
        assert f"--out {finding}/{name}.png" in script and "fact plot " in script
    assert "fact plot fig2-mnist/mlp.h5 --kind bars --relations fact,fact_sqrt,nfa,enfa" in (
        root / "fig2-mnist" / "commands.sh").read_text()
    (root / "fig11" / "alpha_L4.png").unlink()
    said = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
        reproduce(["fig11"], root, mode="smoke", say=said.append)
    assert said[0] == "no figures: matplotlib is not installed (pip install 'factcli[plot]')"
    assert len(said) == 9 and not (root / "fig11" / "alpha_L4.png").exists()
    assert "(fig11/alpha_L4.png)" not in (root / "summary.md").read_text()


def test_quick_fig11_reproduces(tmp_path):
    """The fast finding at its real --quick settings (the rest: benchmarks/repro_quick.sh)."""
    rows = reproduce(["fig11"], tmp_path, mode="quick")
    verdicts = {r["quantity"]: r["verdict"] for r in rows}
    for depth in (2, 3, 4, 5):
        assert verdicts[f"alpha_star.L={depth}"] == "reproduced"
        assert verdicts[f"fact_pearson.L={depth}"] == "reproduced"


def test_adamw_finding_at_smoke_settings(tmp_path):
    """`adamw`: one full-batch and one minibatch AdamW run through fact train/analyze; the
    full-batch run is near its fixed point already at smoke settings (600 epochs), where
    fact_adamw is far closer to WᵀW than plain fact (--quick: 2e-8 vs 0.97, docs/repro.md)."""
    rows = {r["quantity"]: r for r in reproduce(["adamw"], tmp_path, mode="smoke")}
    assert set(rows) == {f"{metric}.{relation}.{run}.layer={layer}"
                         for metric, run in (("rel_err", "full-batch"), ("pearson", "minibatch"))
                         for relation in ("fact_adamw", "fact") for layer in ("0", "2")}
    assert all(r["verdict"] == "no paper value" and r["measured"] is not None
               for r in rows.values())
    for layer in ("0", "2"):
        exact = rows[f"rel_err.fact_adamw.full-batch.layer={layer}"]["measured"]
        assert exact < 1e-2 < 0.5 < rows[f"rel_err.fact.full-batch.layer={layer}"]["measured"]
    script = (tmp_path / "adamw" / "commands.sh").read_text()
    assert "--optimizer adamw" in script and "--relations fact,fact_adamw" in script
