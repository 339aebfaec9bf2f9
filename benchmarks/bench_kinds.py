"""Hand-run benchmark of the engine on a CNN (not a test). Ratios measured side by side.

    python benchmarks/bench_kinds.py                 # CNN on mnist-10k, 1 thread
    python benchmarks/bench_kinds.py --n 4000 --threads 2

(a) all relations: `analyze()` against a bare hand-written hook loop doing the same work per
    batch (forward with hooks on every Conv2d/Linear, one backward of the summed loss for the
    parameter gradients and g, one batched backward of the 10 outputs for G, the same float64
    sums Σ g gᵀ and Σ GᵀG over every position, ∇_W L from the parameters).
(b) the FACT family only (fact, bfact and their sym/sqrt variants): `analyze()` against one
    plain forward + backward of the summed loss per batch (target ≤ 1.2×).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from factcli.data.datasets import Dataset, load_dataset
from factcli.engine.analysis import analyze

FACT_ONLY = ["fact", "fact_sym", "fact_sqrt", "bfact", "bfact_sym", "bfact_sqrt"]


class CNN(nn.Module):
    """VGG-style: two conv blocks (3×3, ReLU, 2×2 max-pool) then two Linear layers."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 49, 128), nn.ReLU(),
                                        nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.view(-1, 1, 28, 28)))


def mnist(n: int) -> Dataset:
    data = load_dataset("mnist-10k")
    return Dataset("mnist-10k", data.x_train[:n].contiguous(), data.y_train[:n], n_classes=10)


def hook_loop(model: nn.Module, data: Dataset, batch_size: int, agop: bool) -> None:
    """What the engine does, written out by hand with forward hooks for this model."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = [layer.weight for layer in layers]
    outputs: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(
        lambda m, a, o, i=i: outputs.__setitem__(i, o)) for i, layer in enumerate(layers)]

    def zeros(*shape):
        return torch.zeros(*shape, dtype=torch.float64)

    grad = [zeros(p.shape[0], p[0].numel()) for p in params]
    gg = [zeros(p.shape[0], p.shape[0]) for p in params]
    GG = [zeros(p.shape[0], p.shape[0]) for p in params]
    targets = data.targets("cross_entropy")
    for start in range(0, len(data.x_train), batch_size):
        x = data.x_train[start:start + batch_size]
        out = model(x)
        zs = [outputs[i] for i in range(len(layers))]
        loss = nn.functional.cross_entropy(out, targets[start:start + batch_size],
                                           reduction="sum")
        grads = torch.autograd.grad(loss, params + zs, retain_graph=agop)
        for i, g in enumerate(grads[len(params):]):
            grad[i] += grads[i].reshape(len(grad[i]), -1).double()
            rows = g.movedim(1, -1).reshape(-1, g.shape[1])
            gg[i] += (rows.T @ rows).double()
        if agop:
            eye = torch.eye(out.shape[1]).unsqueeze(1).expand(-1, *out.shape)
            Gs = torch.autograd.grad(out, zs, grad_outputs=eye, is_grads_batched=True)
            for i, G in enumerate(Gs):
                rows = G.movedim(2, -1).reshape(-1, G.shape[2])
                GG[i] += (rows.T @ rows).double()
    for handle in handles:
        handle.remove()


def plain_backward(model: nn.Module, data: Dataset, batch_size: int) -> None:
    targets = data.targets("cross_entropy")
    for start in range(0, len(data.x_train), batch_size):
        model.zero_grad()
        out = model(data.x_train[start:start + batch_size])
        nn.functional.cross_entropy(out, targets[start:start + batch_size],
                                    reduction="sum").backward()


def interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Best time of each function, the repetitions interleaved so that a change in the
    machine's load hits all of them alike."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CNN().eval()
    data = mnist(args.n)
    kwargs = dict(loss="cross_entropy", weight_decay=1e-4, batch_size=args.batch_size,
                  device="cpu")
    print(f"CNN (2 conv + 2 Linear) on mnist-10k, n={len(data.x_train)}, batch "
          f"{args.batch_size}, {args.threads} thread(s), best of {args.repeats}")
    t = interleaved({
        "engine": lambda: analyze(model, data, **kwargs),
        "hooks": lambda: hook_loop(model, data, args.batch_size, agop=True),
        "cheap": lambda: analyze(model, data, relations=FACT_ONLY, **kwargs),
        "plain": lambda: plain_backward(model, data, args.batch_size)}, args.repeats)
    print(f"(a) all relations: analyze() / hand-written hook loop : {t['engine'] / t['hooks']:.2f}"
          f"   ({t['engine']:.2f} s vs {t['hooks']:.2f} s)")
    print(f"(b) FACT family:  analyze() / plain forward+backward  : {t['cheap'] / t['plain']:.2f}"
          f"   ({t['cheap']:.2f} s vs {t['plain']:.2f} s)")


if __name__ == "__main__":
    main()
