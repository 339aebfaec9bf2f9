"""Hand-run benchmark of factcli at language-model scale (not a test; issue 10).

    python benchmarks/bench_lm.py                     # every part, CPU, 1 thread
    python benchmarks/bench_lm.py --part fact --n 16  # (a) only
    python benchmarks/bench_lm.py --part sketch       # (b) only

A GPT-2-shaped model: the built-in `transformer` (pre-LN decoder, causal attention, GELU MLP,
learned positions), per-position logits (output=all), loss next_token, random weights and
random token windows (timings and memory do not depend on the values).

(a) FACT-family relations only (one backward of the loss: the parameters' gradients) vs one
    plain forward + backward of the same summed loss in torch, same batches.
(b) the AGOP family sketched with S random probes (S = 32, 128) vs exact, same samples, same
    layers (the blocks' matrices; the head's vocab×vocab bAGOP is left to the factored form):
    time ratio, metric differences, and how often |sketch − exact| ≤ 3 s.e. Exact runs over the
    last position's V outputs (`outputs="last"`: V backward probes per sample; all T×V outputs
    would be T times more, out of reach on a CPU), and the sketches over the same outputs; the
    sketch over all T×V outputs is timed too.
(c) peak memory above the loaded model and data for growing vocabulary, FACT family only,
    fresh process each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from factcli.data.datasets import Dataset
from factcli.engine.analysis import prepare
from factcli.engine.conventions import FACT_FAMILY
from factcli.models.transformer import Transformer

FACT_ONLY = sorted(FACT_FAMILY)


def gpt(vocab: int, context: int, width: int, depth: int) -> Transformer:
    """A GPT-2-shaped decoder (heads of 32 dimensions), seeded."""
    torch.manual_seed(0)
    return Transformer(vocab, context, vocab, width, max(1, width // 32), depth,
                       output="all").eval()


def tokens(n: int, length: int, vocab: int) -> Dataset:
    """n random token windows and their next-token targets (the window shifted by one)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n, length + 1), generator=generator)
    return Dataset(f"random tokens n={n} T={length} V={vocab}", ids[:, :-1].contiguous(),
                   ids[:, 1:].contiguous(), n_classes=vocab)


def timed(function, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def plain_pass(model: Transformer, data: Dataset, batch_size: int) -> None:
    """Forward and backward of the summed per-sample next-token loss, nothing else."""
    for start in range(0, len(data.x_train), batch_size):
        x, y = data.x_train[start:start + batch_size], data.y_train[start:start + batch_size]
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        model.zero_grad(set_to_none=True)
        loss.view(len(x), -1).mean(dim=1).sum().backward()


def fact_only(args: argparse.Namespace) -> None:
    model, data = gpt(args.vocab, args.T, args.width, args.depth), tokens(args.n, args.T,
                                                                           args.vocab)
    plan = prepare(model, data, loss="next_token", weight_decay=1e-4, relations=FACT_ONLY,
                   batch_size=args.batch_size, device="cpu", max_vocab=args.vocab)
    sums = timed(plan.accumulate)
    plain = timed(lambda: plain_pass(plan.network, data, args.batch_size))
    finish = timed(lambda: plan.finish(plan.accumulate()), repeats=1) - sums
    print(f"(a) depth {args.depth}, width {args.width}, vocab {args.vocab}, T {args.T}, "
          f"n {args.n}, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
          "FACT family only")
    print(f"    plain forward+backward {plain:.2f} s, engine sums {sums:.2f} s: "
          f"ratio {sums / plain:.2f} (target ≤ 1.2); relations from the sums {finish:.2f} s")


def sketch_vs_exact(args: argparse.Namespace) -> None:
    import statistics

    model, data = gpt(args.vocab, args.T, args.width, args.depth), tokens(args.n_exact, args.T,
                                                                           args.vocab)
    common = dict(loss="next_token", weight_decay=1e-4, relations=["agop", "nfa", "bagop",
                                                                   "bnfa"],
                  layers=["blocks.*"], batch_size=args.batch_size, device="cpu")

    def run(**options):
        plan = prepare(model, data, **common, **options)
        start = time.perf_counter()
        result = plan.finish(plan.accumulate())
        return result, time.perf_counter() - start

    exact, exact_s = run(agop_probes="exact", outputs="last")
    print(f"(b) depth {args.depth}, width {args.width}, vocab {args.vocab}, T {args.T}, "
          f"{args.n_exact} samples, layers blocks.* ({len(exact.layers)} matrices), "
          f"{torch.get_num_threads()} thread(s)")
    print(f"    exact over the last position ({exact.info['agop_outputs']} outputs per sample): "
          f"{exact_s:.1f} s")
    for probes in args.probes:
        sketch, sketch_s = run(agop_probes=probes, outputs="last")
        diffs, covered = [], 0
        for truth, layer in zip(exact.layers, sketch.layers):
            for relation, values in truth.metrics.items():
                for metric in ("pearson", "cosine"):
                    diff = abs(layer.metrics[relation][metric] - values[metric])
                    diffs.append(diff)
                    covered += diff <= 3 * layer.metrics[relation][metric + "_se"]
        whole, whole_s = run(agop_probes=probes, outputs="all")
        print(f"    S={probes}: {sketch_s:.2f} s, exact/sketch time {exact_s / sketch_s:.0f}x; "
              f"|Δ metric| median {statistics.median(diffs):.4f}, max {max(diffs):.4f} over "
              f"{len(diffs)} (layer, relation, pearson|cosine); within 3 s.e.: "
              f"{covered}/{len(diffs)}; over all {whole.info['agop_outputs']} outputs: "
              f"{whole_s:.2f} s")


def memory_child(args: argparse.Namespace) -> None:
    import gc

    model, data = gpt(args.vocab, args.T, args.width, args.depth), tokens(args.n, args.T,
                                                                           args.vocab)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to now
        handle.write("5")
    resident = _status_kib("VmRSS")
    plan = prepare(model, data, loss="next_token", weight_decay=1e-4, relations=FACT_ONLY,
                   batch_size=args.batch_size, device="cpu", max_vocab=args.vocab)
    plan.finish(plan.accumulate())
    peak = _status_kib("VmHWM")
    print(json.dumps({"vocab": args.vocab, "engine_peak_mib": (peak - resident) / 1024,
                      "process_peak_mib": peak / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def memory(args: argparse.Namespace) -> None:
    print(f"(c) peak memory by vocabulary, FACT family, fresh process each (depth {args.depth}, "
          f"width {args.width}, T {args.T}, n {args.n})")
    for vocab in args.vocabs:
        command = [sys.executable, __file__, "--part", "memory-child", "--vocab", str(vocab),
                   *(f"--{key}={getattr(args, key.replace('-', '_'))}"
                     for key in ("n", "T", "width", "depth", "batch-size", "threads"))]
        row = json.loads(subprocess.run(command, check=True, capture_output=True,
                                        text=True).stdout)
        print(f"    vocab {row['vocab']}: engine peak above model and data "
              f"{row['engine_peak_mib']:.0f} MiB (process {row['process_peak_mib']:.0f} MiB)")


PARTS = {"fact": fact_only, "sketch": sketch_vs_exact, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="all", choices=["all", *PARTS, "memory-child"])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--n-exact", type=int, default=2, help="samples of part (b)")
    parser.add_argument("--probes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--T", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "memory-child":
        return memory_child(args)
    for name, part in PARTS.items():
        if args.part in ("all", name):
            part(args)


if __name__ == "__main__":
    main()
