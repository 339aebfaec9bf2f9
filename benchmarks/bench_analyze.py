"""Hand-run benchmark of the relation engine (not a test). Reports ratios measured side by side.

    python benchmarks/bench_analyze.py            # all three parts, CPU, 1 thread by default
    python benchmarks/bench_analyze.py --part overhead --n 40000   # (a) at 40k samples

(a) `analyze` vs the bare minimum in plain torch with hooks (forward + backward of the summed
    loss + one batched backward of the c outputs per batch, the same float64 sums), same batches;
    also the whole `fact analyze` command (process start, imports, loading) vs that minimum.
(b) AGOP by the per-layer per-sample-Jacobian method of the published NFA code (vmap(jacrev) of
    the sub-network from each layer, AGOP = mean JᵀJ) vs `analyze`, for growing depth.
(c) peak memory of the engine (above the loaded data) from n/2 to 4n samples, fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from factcli.data.datasets import Dataset, load_dataset
from factcli.engine.analysis import analyze
from factcli.io.checkpoint import Checkpoint, save_checkpoint
from factcli.models.archs import mlp


def mnist(n: int) -> Dataset:
    """n real MNIST images (the shipped 10k, repeated with a seeded jitter beyond 10k)."""
    data = load_dataset("mnist-10k")
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    reps = -(-n // len(x))
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([x] + [(x + 0.01 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
                         for _ in range(reps - 1)])[:n]
    return Dataset(f"mnist-10k x{reps}", x.contiguous(), torch.cat([y] * reps)[:n], n_classes=10)


def bare_minimum(model: nn.Sequential, data: Dataset, batch_size: int, sums: bool) -> None:
    """Forward, backward of the summed loss, batched backward of the c outputs; plain hooks."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    store: dict[int, tuple] = {}
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, (a[0], o)))
               for i, layer in enumerate(linears)]
    acc = {i: [torch.zeros(lin.out_features, lin.in_features, dtype=torch.float64),
               torch.zeros(lin.out_features, lin.out_features, dtype=torch.float64),
               torch.zeros(lin.out_features, lin.out_features, dtype=torch.float64)]
           for i, lin in enumerate(linears)}
    targets = data.targets("mse")
    n = len(data.x_train)
    for start in range(0, n, batch_size):
        x, t = data.x_train[start:start + batch_size], targets[start:start + batch_size]
        out = model(x)
        zs = [store[i][1] for i in range(len(linears))]
        loss = ((out - t) ** 2).mean(dim=1).sum()
        gs = torch.autograd.grad(loss, zs, retain_graph=True)
        eye = torch.eye(out.shape[1]).unsqueeze(1).expand(out.shape[1], *out.shape)
        Gs = torch.autograd.grad(out, zs, grad_outputs=eye, is_grads_batched=True)
        if sums:
            for i, (g, G) in enumerate(zip(gs, Gs)):  # products per batch, float64 totals
                h, flat = store[i][0], G.reshape(-1, G.shape[-1])
                acc[i][0] += (g.T @ h).double()
                acc[i][1] += (g.T @ g).double()
                acc[i][2] += (flat.T @ flat).double()
    for handle in handles:
        handle.remove()


def published_agop(model: nn.Sequential, data: Dataset, batch_size: int) -> None:
    """AGOP of every Linear by vmap(jacrev) of the sub-network that starts at that layer."""
    modules = list(model)
    for index, module in enumerate(modules):
        if not isinstance(module, nn.Linear):
            continue
        head, tail = nn.Sequential(*modules[:index]), nn.Sequential(*modules[index:])
        agop = torch.zeros(module.in_features, module.in_features)
        for start in range(0, len(data.x_train), batch_size):
            with torch.no_grad():
                h = head(data.x_train[start:start + batch_size])
            jac = torch.func.vmap(torch.func.jacrev(tail))(h)   # (B, c, k)
            agop += torch.einsum("bck,bcl->kl", jac, jac)
        agop /= len(data.x_train)


def timed(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def overhead(n: int, batch_size: int) -> None:
    torch.manual_seed(0)
    model = mlp(784, 10, 256, 5).eval()
    data = mnist(n)
    kwargs = dict(loss="mse", weight_decay=1e-4, batch_size=batch_size, device="cpu")
    engine = timed(lambda: analyze(model, data, **kwargs))
    passes = timed(lambda: bare_minimum(model, data, batch_size, sums=False))
    minimum = timed(lambda: bare_minimum(model, data, batch_size, sums=True))
    with tempfile.TemporaryDirectory() as folder:
        import numpy as np
        np.savez(f"{folder}/d.npz", x_train=data.x_train.numpy(), y_train=data.y_train.numpy())
        save_checkpoint(f"{folder}/m.pt", Checkpoint(
            {"arch": "mlp", "in_features": 784, "out_features": 10, "width": 256, "depth": 5},
            model.state_dict(), {"dataset": f"file:{folder}/d.npz", "loss": "mse",
                                 "weight_decay": 1e-4}))
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        command = [sys.executable, "-m", "factcli", "analyze", f"{folder}/m.pt", "--device",
                   "cpu", "--batch-size", str(batch_size), "-f", "jsonl"]
        whole = timed(lambda: subprocess.run(command, check=True, capture_output=True, env=env),
                      repeats=2)
    print(f"(a) n={n}, batch {batch_size}, {torch.get_num_threads()} thread(s), 5x256 ReLU MLP, "
          "all relations, all layers")
    print(f"    analyze() / bare minimum with the same float64 sums : {engine / minimum:.2f}")
    print(f"    analyze() / bare passes (no sums at all)            : {engine / passes:.2f}")
    print(f"    whole `fact analyze` command / bare minimum         : {whole / minimum:.2f}")


def depth_scaling(n: int, batch_size: int) -> None:
    data = mnist(n)
    kwargs = dict(loss="mse", weight_decay=1e-4, batch_size=batch_size, device="cpu")
    print("(b) published per-layer vmap(jacrev) AGOP / analyze(), by depth: all relations | "
          "AGOP only (what the published code computes)")
    for depth in (2, 3, 5, 8, 16):
        torch.manual_seed(0)
        deep = mlp(784, 10, 256, depth).eval()
        ours = timed(lambda deep=deep: analyze(deep, data, **kwargs), repeats=2)
        agop = timed(lambda deep=deep: analyze(deep, data, relations=["agop"], **kwargs),
                     repeats=2)
        theirs = timed(lambda deep=deep: published_agop(deep, data, batch_size), repeats=2)
        print(f"    depth {depth}: {theirs / ours:.2f}x | {theirs / agop:.2f}x")


def memory_child(n: int, batch_size: int) -> None:
    torch.manual_seed(0)
    model = mlp(784, 10, 256, 5).eval()
    data = mnist(n)
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to now
        handle.write("5")
    resident = _status_kib("VmRSS")
    analyze(model, data, loss="mse", weight_decay=1e-4, batch_size=batch_size, device="cpu")
    peak = _status_kib("VmHWM")
    print(json.dumps({"n": n, "engine_peak_mib": (peak - resident) / 1024,
                      "process_peak_mib": peak / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def memory(n: int, batch_size: int) -> None:
    print(f"(c) peak memory, fresh process each, batch {batch_size}")
    for size in (n // 2, n, 2 * n, 4 * n):
        result = subprocess.run([sys.executable, __file__, "--part", "memory-child", "--n",
                                 str(size), "--batch-size", str(batch_size)],
                                check=True, capture_output=True, text=True)
        row = json.loads(result.stdout)
        print(f"    n={row['n']}: engine peak above the loaded data "
              f"{row['engine_peak_mib']:.0f} MiB (process {row['process_peak_mib']:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="all", choices=["all", "overhead", "depth", "memory",
                                                          "memory-child"])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "memory-child":
        return memory_child(args.n, args.batch_size)
    if args.part in ("all", "overhead"):
        overhead(args.n, args.batch_size)
    if args.part in ("all", "depth"):
        depth_scaling(args.n, args.batch_size)
    if args.part in ("all", "memory"):
        memory(args.n, args.batch_size)


if __name__ == "__main__":
    main()
