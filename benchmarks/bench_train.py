"""Epoch time of `factcli.train` against two hand-written PyTorch loops (issue 3).

Same model (5-layer ReLU MLP), same data (the shipped MNIST subset, 8,000 images), same
optimizer (SGD, momentum 0.9, coupled weight decay 1e-4, batch 128, float32), same process:

- plain:      the dataset as tensors, a randperm per epoch, index slices, F.mse_loss;
- dataloader: DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True), the usual loop.

The three run in interleaved rounds so that load from other processes hits them alike; the
minimum epoch time of each (robust to other load on a shared machine) and the median are
reported (factcli's per-epoch `time_s` excludes its start-up and its final float64 evaluation,
which the loops do not do either). Run by hand:

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --epochs 4 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from factcli.data.datasets import load_dataset
from factcli.models.archs import build_model
from factcli.training.loop import train


def model_for(width: int, depth: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model({"arch": "mlp", "in_features": 784, "out_features": 10, "width": width,
                        "depth": depth, "activation": "relu", "bias": True})


def plain_loop(x, y, width, depth, epochs, batch_size, lr, seed) -> list[float]:
    model = model_for(width, depth, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        tick = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            loss = F.mse_loss(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - tick)
    return times


def dataloader_loop(x, y, width, depth, epochs, batch_size, lr, seed) -> list[float]:
    model = model_for(width, depth, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    times = []
    for _ in range(epochs):
        tick = time.perf_counter()
        for batch_x, batch_y in loader:
            loss = F.mse_loss(model(batch_x), batch_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - tick)
    return times


def factcli_loop(spec, width, depth, epochs, batch_size, lr, seed) -> list[float]:
    result = train(arch="mlp", dataset=spec, width=width, depth=depth, optimizer="sgd", lr=lr,
                   momentum=0.9, weight_decay=1e-4, schedule="constant", epochs=epochs,
                   batch_size=batch_size, seed=seed, device="cpu", eval_every=10 ** 9)
    return [row["time_s"] for row in result.history[:-1]]  # the last epoch also evaluates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-10k")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    x, y = data.x_train, data.targets("mse")
    common = (args.width, args.depth, args.epochs, args.batch_size, args.lr, 0)
    times: dict[str, list[float]] = {"factcli": [], "plain": [], "dataloader": []}
    plain_loop(x, y, *common[:1], args.depth, 1, args.batch_size, args.lr, 0)  # warm-up
    for _ in range(args.rounds):
        times["factcli"] += factcli_loop(args.dataset, *common)
        times["plain"] += plain_loop(x, y, *common)
        times["dataloader"] += dataloader_loop(x, y, *common)
    median = {name: statistics.median(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(f"{args.dataset}, mlp width {args.width} depth {args.depth}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), {args.rounds} rounds × {args.epochs} epochs")
    for name in times:
        print(f"  {name:<11} epoch: min {best[name] * 1000:8.1f} ms, "
              f"median {median[name] * 1000:8.1f} ms")
    for other, note in (("plain", "  (target ≤ 1.1)"), ("dataloader", "")):
        print(f"  factcli / {other:<10} = {best['factcli'] / best[other]:.3f} (min), "
              f"{median['factcli'] / median[other]:.3f} (median){note}")


if __name__ == "__main__":
    main()
