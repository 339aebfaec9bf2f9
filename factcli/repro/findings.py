"""The paper's findings, each as `fact` commands (train → analyze/rfm) and the quantities read
from their outputs. Settings per mode: `smoke` (seconds; for tests, numbers not meaningful),
`quick` (shipped data, minutes on a 2-core CPU) and `full` (the paper's settings)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FactError
from .runner import Runner, Step
from .verdict import markdown_table, quantity

MODES = ("smoke", "quick", "full")
FIGURE_DPI = 100  # small PNGs: docs/repro/quick commits them


@dataclass
class Context:
    """What a finding needs: where to run, which mode, and the steps it ran so far."""

    finding: str
    root: Path
    mode: str
    runner: Runner
    data_dir: Path | None = None
    figures: bool = True
    steps: list[Step] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def pick(self, smoke: Any, quick: Any, full: Any) -> Any:
        return {"smoke": smoke, "quick": quick, "full": full}[self.mode]

    def run(self, *argv: object, outputs: tuple[str, ...] = (), stdout: str | None = None,
            inputs: tuple[str, ...] = (), data: bool = False) -> Step:
        if data and self.data_dir is not None:
            argv = (*argv, "--data-dir", self.data_dir)
        step = Step.of(*argv, outputs=outputs, stdout=stdout, inputs=inputs)
        self.steps.append(step)
        self.runner.run(step)
        return step

    def train(self, out: str, arch: str, *options: object, also: tuple[str, ...] = ()) -> str:
        """`fact train` to OUT; `also`: further files it makes (snapshots)."""
        self.run("train", arch, *options, "--out", out, "--quiet", "--device", "cpu",
                 outputs=(out, *also), data=True)
        return out

    def analyze(self, checkpoint: str, *options: object):
        """`fact analyze` to NAME.h5 (with matrices) and NAME.jsonl; returns the Analysis."""
        from ..io.report import read_report

        stem = checkpoint.rsplit(".", 1)[0]
        self.run("analyze", checkpoint, *options, "--device", "cpu", "--format", "jsonl",
                 "--report", f"{stem}.h5", outputs=(f"{stem}.h5",), stdout=f"{stem}.jsonl",
                 inputs=(checkpoint,), data=True)
        return read_report(self.root / f"{stem}.h5")

    def rfm(self, name: str, *options: object, report: bool = True,
            inputs: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """`fact rfm ... -f jsonl > NAME.jsonl` (+ NAME.h5 with M per iteration); `inputs`: the
        data files it reads (a rewritten one makes it run again)."""
        extra = ("--report", f"{name}.h5") if report else ()
        self.run("rfm", *options, *extra, "--device", "cpu", "--format", "jsonl",
                 outputs=(f"{name}.h5",) if report else (), stdout=f"{name}.jsonl",
                 inputs=inputs, data=True)
        return [json.loads(line) for line in
                (self.root / f"{name}.jsonl").read_text().splitlines() if line.strip()]

    def plot(self, name: str, kind: str, *inputs: str, options: tuple[object, ...] = ()) -> None:
        """`fact plot INPUTS --kind KIND -o FINDING/NAME.png` (skipped without matplotlib);
        the alpha view recomputes the AGOP from the checkpoint, on the CPU."""
        if not self.figures:
            return
        out = f"{self.finding}/{name}.png"
        analysis = ("--device", "cpu") if kind == "alpha" else ()
        self.run("plot", *inputs, "--kind", kind, *options, *analysis, "--dpi", FIGURE_DPI,
                 "--out", out, outputs=(out,), inputs=inputs, data=kind == "alpha")

    def q(self, name: str, measured: float | None, note: str = "") -> None:
        self.rows.append(quantity(self.finding, name, measured, note))

    def write(self, name: str, text: str) -> None:
        """A table or other artifact of the finding, beside its outputs."""
        path = self.root / self.finding / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _metric(layer, relation: str, metric: str = "pearson") -> float:
    return layer.metrics.get(relation, {}).get(metric, math.nan)


# ---------------------------------------------------------------- networks

def fig11(ctx: Context) -> None:
    """Deep linear networks y = W_L⋯W_1 x on a Gaussian teacher: α* = 1/L, FACT untuned."""
    epochs, polish = ctx.pick((200, 50), (500, 100), (2000, 200))
    for depth in (2, 3, 4, 5):
        ckpt = ctx.train(f"fig11/linear_L{depth}.pt", "linear", "--dataset",
                         "teacher-linear:d=10,c=10,n=100,seed=0", "--depth", depth,
                         "--optimizer", "gd", "--lr", 0.1, "--dtype", "float64",
                         "--weight-decay", 1e-3, "--epochs", epochs, "--polish", polish)
        first = ctx.analyze(ckpt, "--relations", "fact,nfa").layers[0]
        note = f"layer {first.name}, stationarity {first.stationarity:.2g}"
        ctx.q(f"alpha_star.L={depth}", first.best_alpha, note)
        ctx.q(f"fact_pearson.L={depth}", _metric(first, "fact"),
              note + f"; NFA at α = 1/2: {_metric(first, 'nfa'):.3f}")
    ctx.plot("alpha_L4", "alpha", "fig11/linear_L4.h5")


def sec6(ctx: Context) -> None:
    """The separation construction: FACT cosine ≈ 1, NFA nearly uncorrelated, over τ."""
    taus = ctx.pick((0.1,), (0.03, 0.1, 0.3, 1.0), (0.01, 0.03, 0.1, 0.3, 1.0))
    epochs, polish = ctx.pick((300, 200), (2000, 1000), (5000, 1000))
    for tau in taus:
        ckpt = ctx.train(f"sec6/quadratic_tau{tau:g}.pt", "quadratic", "--dataset",
                         f"separation:tau={tau:g}", "--optimizer", "adam", "--lr", 0.01,
                         "--weight-decay", 1e-3, "--epochs", epochs, "--polish", polish)
        first = ctx.analyze(ckpt, "--relations", "fact,nfa").layers[0]
        note = f"stationarity {first.stationarity:.2g}"
        ctx.q(f"fact_cosine.tau={tau:g}", _metric(first, "fact", "cosine"), note)
        ctx.q(f"nfa_pearson.tau={tau:g}", _metric(first, "nfa"),
              f"NFA cosine {_metric(first, 'nfa', 'cosine'):.3f}, α* {first.best_alpha:.2f}")
    ctx.plot("matrices_tau0.1", "matrices", "sec6/quadratic_tau0.1.h5",
             options=("--relations", "fact,nfa"))


def _mlp_options(ctx: Context, dataset_quick: str, dataset_full: str) -> tuple[object, ...]:
    dataset = ctx.pick("mnist-10k:n=500,n_test=200", dataset_quick, dataset_full)
    width, depth = ctx.pick(32, 256, 256), ctx.pick(3, 5, 5)
    epochs = ctx.pick(20, 200, 200)
    return ("--dataset", dataset, "--width", width, "--depth", depth, "--activation", "relu",
            "--loss", "mse", "--optimizer", "sgd", "--lr", 0.5, "--momentum", 0.9,
            "--weight-decay", 1e-4, "--schedule", "cosine", "--epochs", epochs,
            "--batch-size", 128, "--seed", 0)


PER_LAYER = ("fact", "fact_sqrt", "nfa", "enfa")


def _per_layer(ctx: Context, checkpoint: str, *options: object, every: bool = False) -> None:
    """FACT against NFA and eNFA in each layer of one checkpoint (Fig. 2's comparison): the
    differences of their Pearson with WᵀW, a table and the bars; `every`: also each Pearson and
    the stationarity as quantities of their own."""
    analysis = ctx.analyze(checkpoint, "--relations", ",".join(PER_LAYER), *options)
    table = []
    for layer in analysis.layers:
        values = {r: _metric(layer, r) for r in PER_LAYER}
        note = ", ".join(f"{r} {v:.3f}" for r, v in values.items())
        where = f"layer={layer.name}"
        if every:
            ctx.q(f"fact_pearson.{where}", values["fact"], note)
            ctx.q(f"nfa_pearson.{where}", values["nfa"], note)
            ctx.q(f"stationarity.{where}", layer.stationarity,
                  "‖∇W L_data + λW‖ / ‖λW‖: FACT must hold where it is ~0")
        ctx.q(f"fact_minus_nfa.{where}", values["fact"] - values["nfa"], note)
        ctx.q(f"fact_minus_enfa.{where}", values["fact"] - values["enfa"],
              f"stationarity {layer.stationarity:.2g}")
        table.append([layer.name, f"{layer.in_features}→{layer.out_features}",
                      layer.stationarity, *values.values()])
    ctx.write("pearson.md", markdown_table(["layer", "k→m", "stationarity", *PER_LAYER], table))
    ctx.plot("bars", "bars", checkpoint.rsplit(".", 1)[0] + ".h5",
             options=("--relations", ",".join(PER_LAYER)))


def _fig2(ctx: Context, name: str, quick: str, full: str) -> None:
    ckpt = ctx.train(f"{name}/mlp.pt", "mlp", *_mlp_options(ctx, quick, full))
    _per_layer(ctx, ckpt, "--matrices", "all")


def fig2_mnist(ctx: Context) -> None:
    """5-layer ReLU MLP, MSE, SGD + momentum, cosine, λ 1e-4: FACT vs NFA vs eNFA per layer."""
    _fig2(ctx, "fig2-mnist", "mnist-10k", "mnist")


def fig2_cifar10(ctx: Context) -> None:
    """The same on CIFAR-10 (needs the CIFAR-10 files in --data-dir, also in --quick)."""
    if ctx.mode != "smoke" and ctx.data_dir is None:
        raise FactError("fig2-cifar10 needs the CIFAR-10 files: give --data-dir (or use "
                        "fig2-mnist, which runs on shipped data)")
    _fig2(ctx, "fig2-cifar10", "cifar10:n=10000", "cifar10")


def cnn(ctx: Context) -> None:
    """Beyond the paper: FACT vs NFA and eNFA per layer of the built-in cnn (convolutions as
    out × (in·3·3) matrices on their patches), the sample_checkpoints recipe on fewer images
    (GELU and average pooling keep the objective smooth; λ 1e-3)."""
    dataset = ctx.pick("mnist-10k:n=300,n_test=100", "mnist-10k:n=2000,n_test=500", "mnist-10k")
    epochs = ctx.pick(5, 200, 200)
    ckpt = ctx.train("cnn/cnn.pt", "cnn", "--dataset", dataset, "--channels", "8,16", "--width",
                     32, "--depth", 2, "--activation", "gelu", "--pool", "avg", "--loss", "mse",
                     "--optimizer", "sgd", "--lr", 0.3, "--momentum", 0.9, "--weight-decay",
                     1e-3, "--schedule", "cosine", "--epochs", epochs, "--batch-size", 128,
                     "--seed", 0)
    _per_layer(ctx, ckpt, every=True)


def transformer(ctx: Context) -> None:
    """Beyond the paper: FACT vs NFA and eNFA per weight matrix of the built-in transformer
    (embeddings, the q/k/v blocks of the fused attention projection, out_proj, MLP, head) on
    modular addition as tokens "a b =", full-batch Adam (coupled L2), polished towards a
    critical point. Without LayerNorm (`--norm none`), as sample_checkpoints'
    transformer_nonorm_mod59.pt: with it no critical point exists for λ > 0, which
    `stream_writers` measures on a pre-LN twin."""
    p, width, heads = ctx.pick((11, 8, 2), (23, 32, 4), (59, 32, 4))
    # quick: λ 1e-2 (at 3e-3 and p = 23 the polish needs 3000 steps, 85 s, for stationarity 0.09)
    epochs, polish, decay = ctx.pick((50, 0, 1e-2), (3000, 1000, 1e-2), (3000, 1000, 3e-3))
    n_train = round(0.5 * p * p)
    common = ("--dataset", f"modular:p={p},op=add,train_frac=0.5,tokens=yes", "--width", width,
              "--depth", 1, "--heads", heads, "--loss", "cross_entropy", "--optimizer", "adam",
              "--lr", 3e-3, "--weight-decay", decay, "--batch-size", n_train, "--seed", 0)
    ckpt = ctx.train("transformer/transformer.pt", "transformer", *common, "--norm", "none",
                     "--schedule", "hold-cosine", "--epochs", epochs, "--polish", polish)
    _per_layer(ctx, ckpt, every=True)
    layernorm = ctx.train("transformer/prelayernorm.pt", "transformer", *common,
                          "--epochs", ctx.pick(5, 100, 100))
    cosine, stationarity = stream_writers(ctx.root / layernorm)
    ctx.q("stream_writers.cosine", cosine,
          "the same transformer with pre-LayerNorm: cos(∇L_data, θ) over the parameters that "
          "write the residual stream (embed, pos, out_proj, mlp.2) is ~0 at every point, "
          "because LayerNorm makes the output invariant to their joint scale; so their joint "
          f"stationarity is ≥ 1 (here {stationarity:.3g}) and no critical point with λ > 0 "
          "exists for FACT to hold at")


STREAM_WRITERS = ("embed.", "pos.", ".attn.out_proj.", ".mlp.2.")


def stream_writers(checkpoint: Path) -> tuple[float, float]:
    """cos(∇L_data, θ) and ‖∇L_data + λθ‖ / ‖λθ‖ over the pre-LN transformer's residual-stream
    writers, in float64 on the full training set. Scaling them all by c scales the stream by c,
    which every LayerNorm (ln1, ln2, ln_f) undoes, so L_data is (up to LayerNorm's ε) invariant
    and ∇L_data ⊥ θ: then ‖∇L_data + λθ‖² = ‖∇L_data‖² + λ²‖θ‖² ≥ ‖λθ‖²."""
    import torch

    from ..data.datasets import load_dataset
    from ..io.checkpoint import load_checkpoint
    from ..training.objective import FullData, objective_terms

    stored = load_checkpoint(checkpoint)
    model, loss = stored.build().double(), stored.training["loss"]
    data = FullData(load_dataset(stored.training["dataset"]), loss, torch.device("cpu"),
                    torch.float64)
    objective_terms(model, data.x, data.t, data.train_weights(), loss, backward=True)
    group = [p for name, p in model.named_parameters()
             if any(part in f".{name}" for part in STREAM_WRITERS)]
    grad = torch.cat([p.grad.detach().ravel() for p in group])
    theta = torch.cat([p.detach().ravel() for p in group])
    decay = float(stored.training["weight_decay"])
    cosine = float(grad @ theta / (grad.norm() * theta.norm()))
    return cosine, float((grad + decay * theta).norm() / (decay * theta.norm()))


def _over_training(ctx: Context, forward: bool) -> None:
    """Agreement along one training run's snapshots (shared by fig8 and fig9-10)."""
    epochs, every = ctx.pick((20, 5), (100, 10), (200, 10))
    options = list(_mlp_options(ctx, "mnist-10k:n=2000,n_test=500", "mnist"))
    options[options.index("--epochs") + 1] = epochs
    digits = len(str(epochs))
    snapshots = {e: f"fig8/mlp_epoch{e:0{digits}d}.pt" for e in range(0, epochs + 1, every)}
    ctx.train("fig8/mlp.pt", "mlp", *options, "--save-every", every,
              also=tuple(snapshots.values()))
    relations = "fact,fact_sqrt,bfact,bfact_sqrt"
    series = [(e, ctx.analyze(path, "--relations", relations)) for e, path in snapshots.items()]
    plain, root = ("fact", "fact_sqrt") if forward else ("bfact", "bfact_sqrt")
    prefix = "" if forward else "b"
    table = []
    for index, layer in enumerate(series[-1][1].layers):
        track = [(epoch, a.layers[index]) for epoch, a in series]
        for epoch, item in track:
            table.append([epoch, item.name, item.stationarity, _metric(item, plain),
                          _metric(item, root)])
        middle, end = track[len(track) // 2], track[-1]
        late = _metric(end[1], plain) - _metric(middle[1], plain)
        lead = [_metric(item, root) - _metric(item, plain) for _, item in track[1:-1]]
        ctx.q(f"{prefix}fact_jump.layer={layer.name}", late,
              f"{plain} Pearson {_metric(track[0][1], plain):.3f} at epoch 0, "
              f"{_metric(middle[1], plain):.3f} at epoch {middle[0]}, "
              f"{_metric(end[1], plain):.3f} at epoch {end[0]}")
        ctx.q(f"{prefix}sqrt_lead.layer={layer.name}",
              sum(lead) / len(lead) if lead else math.nan,
              f"mean of {root} − {plain} over the epochs strictly between first and last")
    ctx.write(f"trajectory_{plain}.md", markdown_table(
        ["epoch", "layer", "stationarity", plain, root], table))
    ctx.plot("epochs", "epochs", *(p.replace(".pt", ".h5") for p in snapshots.values()),
             options=("--relations", f"{plain},{root}"))


def fig8(ctx: Context) -> None:
    """FACT and (FFᵀ)^½ agreement over training epochs (`fact train --save-every`)."""
    _over_training(ctx, forward=True)


def fig9_10(ctx: Context) -> None:
    """The backward versions (bFACT, (BBᵀ)^½ vs WWᵀ) over the same run as fig8."""
    _over_training(ctx, forward=False)


def wd(ctx: Context) -> None:
    """Beyond the paper: agreement against the weight decay λ (reviewers' question)."""
    decays = ctx.pick((1e-3,), (1e-4, 1e-3, 1e-2), (1e-5, 1e-4, 1e-3, 1e-2))
    dataset = ctx.pick("mnist-10k:n=300,n_test=100", "mnist-10k:n=2000,n_test=500", "mnist-10k")
    width, epochs = ctx.pick(16, 64, 256), ctx.pick(10, 100, 200)
    for decay in decays:
        ckpt = ctx.train(f"wd/mlp_wd{decay:g}.pt", "mlp", "--dataset", dataset, "--width", width,
                         "--depth", 3, "--lr", 0.5, "--momentum", 0.9, "--weight-decay", decay,
                         "--epochs", epochs, "--seed", 0)
        analysis = ctx.analyze(ckpt, "--relations", "fact,nfa")
        for layer in analysis.layers:
            ctx.q(f"fact_pearson.lambda={decay:g},layer={layer.name}", _metric(layer, "fact"),
                  f"nfa {_metric(layer, 'nfa'):.3f}, stationarity {layer.stationarity:.2g}")


def _ranks(values):
    import numpy as np

    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman_correlation(a, b) -> float:
    """Spearman's ρ of the flattened entries: Pearson of their ranks (ties are rare here)."""
    import numpy as np

    x, y = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else math.nan


def spearman(ctx: Context) -> None:
    """Beyond the paper: rank correlation (Spearman) beside Pearson, on the fig2-mnist run."""
    ckpt = ctx.train("fig2-mnist/mlp.pt", "mlp", *_mlp_options(ctx, "mnist-10k", "mnist"))
    analysis = ctx.analyze(ckpt, "--relations", "fact,fact_sqrt,nfa,enfa", "--matrices", "all")
    for layer in analysis.layers:
        nfm = layer.matrices["nfm"].numpy()
        for relation in ("fact", "nfa", "enfa"):
            rho = spearman_correlation(nfm, layer.matrices[relation].numpy())
            ctx.q(f"spearman.{relation}.layer={layer.name}", rho,
                  f"Pearson {_metric(layer, relation):.3f}")


ADAMW_DATA = "teacher-linear:d=4,c=3,n=30,noise=1,seed=0"  # noisy labels: no exact fit


def adamw(ctx: Context) -> None:
    """Beyond the paper: under AdamW's decoupled decay the fixed point satisfies fact_adamw
    (relations.md §7), not plain FACT. (a) full batch, run to the fixed point: rel_err of both;
    (b) the same run with minibatches: how well each agrees with WᵀW."""
    epochs = {"full-batch": ctx.pick(600, 3000, 10000), "minibatch": ctx.pick(50, 500, 2000)}
    batch = {"full-batch": 30, "minibatch": 5}
    for run, count in epochs.items():
        ckpt = ctx.train(f"adamw/mlp_{run}.pt", "mlp", "--dataset", ADAMW_DATA, "--width", 8,
                         "--depth", 2, "--activation", "tanh", "--optimizer", "adamw",
                         "--lr", 0.05, "--weight-decay", 0.5, "--eps", 1e-2,
                         "--betas", "0.9,0.99", "--schedule", "constant", "--epochs", count,
                         "--batch-size", batch[run], "--dtype", "float64", "--seed", 0)
        analysis = ctx.analyze(ckpt, "--relations", "fact,fact_adamw")
        setting = (f"{count} epochs of batch {batch[run]} (n = 30), AdamW lr 0.05, λ 0.5, "
                   "ε 1e-2, β (0.9, 0.99)")
        metric, other = ("rel_err", "pearson") if run == "full-batch" else ("pearson", "rel_err")
        for layer in analysis.layers:
            for relation in ("fact_adamw", "fact"):
                ctx.q(f"{metric}.{relation}.{run}.layer={layer.name}",
                      _metric(layer, relation, metric),
                      f"{other} {_metric(layer, relation, other):.4g}; {setting}")
        ctx.plot(f"bars_{run}", "bars", f"adamw/mlp_{run}.h5",
                 options=("--relations", "fact,fact_adamw"))


# ---------------------------------------------------------------- RFM

def _rfm_matrix(ctx: Context, name: str, iteration: int | None = None):
    import h5py
    import numpy as np

    with h5py.File(ctx.root / f"{name}.h5", "r") as handle:
        t = int(handle.attrs["best_iteration"]) if iteration is None else iteration
        return np.asarray(handle["layers"][f"iteration_{t}"]["nfm"])


def _parity_name(k: int, n: int, update: str) -> str:
    return f"parity/k{k}_n{n}_{update}"


def _parity_runs(ctx: Context, k: int, n: int, updates: tuple[str, ...]):
    spec = f"parity:d=50,k={k},n={n},n_test={min(n, 2000)},seed=0"
    options = ("--data", spec, "--kernel", "gaussian", "--bandwidth", 5, "--ridge", 1e-3,
               "--iters", 5)
    runs = {}
    for update in updates:
        extra = ("--power", 1) if update == "nfa" else ()
        runs[update] = ctx.rfm(_parity_name(k, n, update), *options, "--update", update,
                               *extra)
    return spec, runs


def fig3(ctx: Context) -> None:
    """Sparse parity: NFA-RFM and FACT-RFM (geo) concentrate M on the k hidden coordinates."""
    import numpy as np

    from ..data.datasets import load_dataset

    ks = ctx.pick((2,), (2, 3), (2, 3, 4))
    for k in ks:
        n = ctx.pick(500, 2000, 20000 if k == 4 else 10000)
        spec, runs = _parity_runs(ctx, k, n, ("fact-geo", "nfa"))
        hidden = sorted(load_dataset(spec).info["hidden"])
        for update, rows in runs.items():
            M = _rfm_matrix(ctx, _parity_name(k, n, update), len(rows) - 1)
            diagonal = np.diag(M)
            top = sorted(np.argsort(diagonal)[::-1][:k].tolist())
            share = float(diagonal[hidden].sum() / diagonal.sum())
            ctx.q(f"hidden_on_top.k={k},{update}", float(top == hidden),
                  f"top-{k} diag(M_5) {top}, hidden {hidden}, trace share {share:.2f}, "
                  f"test acc {100 * rows[-1]['test_acc']:.1f} %")
        ctx.plot(f"rfm_k{k}", "rfm", *(f"{_parity_name(k, n, u)}.h5" for u in runs))


def fig4(ctx: Context) -> None:
    """Sparse parity, the phase transition of test accuracy over RFM iterations."""
    k, n = ctx.pick((3, 500), (3, 2000), (4, 25000))
    _, runs = _parity_runs(ctx, k, n, ("fact-geo", "nfa"))
    for update, rows in runs.items():
        curve = [100 * r["test_acc"] for r in rows]
        jumps = [b - a for a, b in zip(curve, curve[1:])]
        ctx.q(f"largest_jump.{update}", max(jumps) if jumps else math.nan,
              f"k = {k}, n = {n}; test acc % per iteration: "
              + " ".join(f"{c:.1f}" for c in curve))
    ctx.plot(f"rfm_k{k}", "rfm", *(f"{_parity_name(k, n, u)}.h5" for u in runs))


def circulant_profile(M, p: int):
    """The off-diagonal block's averages along its circulant diagonals (j − i mod p)."""
    import numpy as np

    block = np.asarray(M)[:p, p:2 * p]
    index = np.arange(p)
    return np.array([block[index, (index + shift) % p].mean() for shift in range(p)])


def fig5(ctx: Context) -> None:
    """Modular addition mod 61: FACT-RFM (geo) reaches 100 % test; block-circulant M."""
    import numpy as np
    import torch

    from ..rfm.estimator import circulant_share

    spec, runs = fig5_runs(ctx)
    p = int(spec.split("p=")[1].split(",")[0])
    profiles = {}
    for update, rows in runs.items():
        curve = [100 * r["test_acc"] for r in rows]
        first = next((i for i, c in enumerate(curve) if c >= 99), None)
        ctx.q(f"test_acc.{update}", curve[-1],
              f"p = {p}, {len(rows) - 1} iterations; best {max(curve):.2f} % at iteration "
              f"{int(np.argmax(curve))}; first ≥ 99 % at {first}")
        M = _rfm_matrix(ctx, f"fig5/{update}", len(rows) - 1)
        pooled, shares = circulant_share(torch.from_numpy(M), blocks=2)
        ctx.q(f"circulant.{update}", shares[1],
              f"share of the a-to-b block's variance on its circulant diagonals; "
              f"all four blocks pooled {pooled:.3f}")
        profiles[update] = circulant_profile(M, p)
    corr = np.corrcoef(profiles["fact-geo"], profiles["nfa"])[0, 1]
    ctx.q("profile_corr.fact-geo~nfa", float(corr),
          "Pearson of the two off-diagonal circulant profiles")
    ctx.plot("rfm", "rfm", *(f"fig5/{update}.h5" for update in runs))


def fig5_runs(ctx: Context) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """fig5's two RFM runs (shared with fig6): modular addition, quadratic kernel, ridge 0."""
    p = ctx.pick(13, 61, 61)
    iters = {"fact-geo": ctx.pick(10, 60, 80), "nfa": ctx.pick(10, 25, 40)}
    spec = f"modular:p={p},op=add,train_frac=0.5,seed=0"
    runs = {}
    for update, count in iters.items():
        extra = ("--center", "--power", 0.5) if update == "nfa" else ()
        runs[update] = ctx.rfm(f"fig5/{update}", "--data", spec, "--kernel", "quadratic",
                               "--ridge", 0, "--val-frac", 0, "--update", update,
                               "--iters", count, *extra)
    return spec, runs


def fig6(ctx: Context) -> None:
    """Inner-product kernels: the FACT-RFM (geo) and NFA-RFM updates computed from the same M_t
    (fig5's FACT-RFM geo run), compared entry by entry (Prop. 5.1: FACT_t = M Xᵀ Ω X)."""
    import torch

    from ..data.datasets import load_dataset
    from ..engine.linalg import psd_power
    from ..engine.metrics import pearson
    from ..rfm import kernels
    from ..rfm.estimator import update_matrix

    spec, runs = fig5_runs(ctx)
    data = load_dataset(spec)
    x = data.x_train.double()
    y = torch.nn.functional.one_hot(data.y_train, data.n_classes).double()
    kernel = kernels.Kernel("quadratic")
    last = len(runs["fact-geo"]) - 1
    for t in sorted({0, last // 2, last}):
        M = torch.from_numpy(_rfm_matrix(ctx, "fig5/fact-geo", t))
        alpha, _ = kernels.solve(kernel.matrix(x, x, M), y, 0.0)
        F = kernels.fact(kernel, x, alpha, M)
        A = kernels.agop(kernel, x, alpha, M)
        ctx.q(f"update_pearson.iteration={t}",
              pearson(update_matrix("fact-geo", M, F), psd_power(A, 0.5)),
              f"(F M² Fᵀ)^¼ vs AGOP^½ at M_{t}; sym(F) vs AGOP: {pearson((F + F.mT) / 2, A):.3f}")


def table1(ctx: Context) -> None:
    """Tabular accuracy with the RFM protocol, on scikit-learn's shipped sets and every UCI
    folder and KEEL file under --data-dir (datasets.tabular_specs: DIR/uci/NAME/, DIR/keel/)."""
    from ..data.datasets import tabular_specs

    shipped = ctx.pick(("iris", "wine"), ("iris", "wine", "breast_cancer", "digits"),
                       ("iris", "wine", "breast_cancer", "digits"))
    found = tabular_specs(ctx.data_dir) if ctx.data_dir is not None else []
    sets = [(name, f"sklearn:name={name}", ()) for name in shipped] + found
    iters = ctx.pick(1, 5, 5)
    accuracy: dict[str, dict[str, float]] = {}
    for name, spec, files in sets:
        rows = ctx.rfm(f"table1/{name}", "--data", spec, "--protocol", "tabular", "--iters",
                       iters, report=False, inputs=files)
        accuracy[name] = {r["method"]: 100 * r["test_acc"] for r in rows}
    methods = ("fact", "fact-geo", "nfa", "kernel")
    means = {m: sum(a[m] for a in accuracy.values()) / len(accuracy) for m in methods}
    kinds = [(kind, [name for name, *_ in found if name.startswith(f"{kind.lower()}-")])
             for kind in ("UCI", "KEEL")]
    note = (f"mean over {len(sets)} sets: {len(shipped)} scikit-learn ({', '.join(shipped)})"
            + "".join(f", {len(names)} {kind} ({_listed(names)})" for kind, names in kinds
                      if names) if found else
            f"mean over {len(shipped)} scikit-learn sets ({', '.join(shipped)}), not the "
            "paper's 121 UCI sets")
    for method in methods:
        ctx.q(f"mean_acc.{method}", means[method], note)
    ctx.q("fact_minus_nfa", means["fact"] - means["nfa"], "points of mean accuracy")
    ctx.q("fact_minus_kernel", means["fact"] - means["kernel"], "points of mean accuracy")
    ctx.write("accuracy.md", markdown_table(["set", *methods], [
        [name, *(a[m] for m in methods)] for name, a in accuracy.items()]))


def _listed(names: list[str], most: int = 8) -> str:
    """Names for a note: all of a few, else the first ones and how many more (accuracy.md)."""
    shown = ", ".join(name.split("-", 1)[1] for name in names[:most])
    return shown + (f" and {len(names) - most} more, see accuracy.md" if len(names) > most
                    else "")


@dataclass(frozen=True)
class Finding:
    name: str
    run: Callable[[Context], None]
    summary: str


FINDINGS = {f.name: f for f in (
    Finding("fig11", fig11, "deep linear nets, depth 2–5: best NFA α = 1/L, FACT needs no tuning"),
    Finding("sec6", sec6, "separation: FACT cosine ≈ 1 while NFA is nearly uncorrelated; τ sweep"),
    Finding("fig2-mnist", fig2_mnist, "5-layer ReLU MLP on MNIST: FACT vs NFA vs eNFA per layer"),
    Finding("fig2-cifar10", fig2_cifar10, "the same on CIFAR-10 (needs --data-dir)"),
    Finding("cnn", cnn, "beyond the paper: FACT vs NFA vs eNFA per layer of the built-in cnn"),
    Finding("transformer", transformer, "beyond the paper: FACT vs NFA per layer of the built-in "
            "transformer without LayerNorm (q/k/v included), and why LayerNorm has no critical "
            "point"),
    Finding("fig8", fig8, "FACT agreement over epochs: jumps near interpolation, (FFᵀ)^½ earlier"),
    Finding("fig9-10", fig9_10, "the backward versions (bFACT) over the same epochs"),
    Finding("fig3", fig3, "sparse parity: M concentrates on the hidden coordinates"),
    Finding("fig4", fig4, "sparse parity: phase transition of accuracy over iterations"),
    Finding("fig5", fig5, "modular addition mod 61: FACT-RFM geo to 100 %, block-circulant M"),
    Finding("fig6", fig6, "inner-product kernels: FACT-RFM geo vs NFA-RFM updates from one M_t"),
    Finding("table1", table1, "tabular accuracy, RFM protocol, beside 85.22/84.99/85.10/83.71"),
    Finding("wd", wd, "beyond the paper: agreement against the weight decay λ"),
    Finding("spearman", spearman, "beyond the paper: Spearman rank correlation beside Pearson"),
    Finding("adamw", adamw, "beyond the paper: fact_adamw exact at an AdamW fixed point, "
            "plain FACT not; both after minibatch AdamW"),
)}
