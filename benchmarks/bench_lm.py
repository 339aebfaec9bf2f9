"""Hand-run benchmark of the engine on a GPT-2-shaped language model (not a test).

    python benchmarks/bench_lm.py                      # every part, CPU, 1 thread
    python benchmarks/bench_lm.py --part fact --n 64   # (a) only
    python benchmarks/bench_lm.py --part sketch        # (b) only

Model: the built-in `transformer` (pre-LN decoder, untied head), `--depth` 4, width 128, vocab
8,192, T = 64 tokens, next-token loss on random tokens, float32.

(a) FACT-family relations only (fact, fact_sym, fact_sqrt and their backward versions, every
    layer, metrics included) vs one plain forward + backward of the summed loss over the same
    batches, timed side by side and interleaved (best of `--repeats`), split into the pass over
    the data (the sums) and the relations and metrics from them. With `--dense` also the latter
    with every relation formed densely (`max_dense=None`: the head's vocab×vocab ones).
(b) the AGOP family sketched with S random probes (S = 32, 128) vs exact, same samples, same
    layers (the blocks' matrices; the head's vocab×vocab bAGOP is left to the factored form):
    time ratio, metric differences, and how often |sketch − exact| ≤ 3 s.e. Exact runs over the
    last position's V outputs (`outputs="last"`: V backward probes per sample; all T×V outputs
    would be T times more, out of reach on a CPU), and the sketches over the same outputs; the
    sketch over all T×V outputs is timed too.
(c) Peak memory by vocabulary, a fresh process each: the plain forward + backward and the
    analysis without the AGOP (the FACT and eNFA families; the head's vocab×vocab relations
    from factors: `--max-dense` 1,024 is below every vocabulary), each peak (VmHWM) above the
    loaded model and data. The analysis keeps the matrices `--keep-matrices` names: none by
    default, which is what `fact analyze` without `--report` keeps; `all` is the library's
    default (a notebook's `analyze(...)`, which returns every matrix).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch
from bench_analyze import _status_kib, timed  # benchmarks/ is the script's folder

from factcli.data.datasets import Dataset
from factcli.engine.analysis import analyze, prepare
from factcli.engine.conventions import FACT_FAMILY
from factcli.engine.losses import per_sample_loss
from factcli.models.archs import build_model

FACT_ONLY = sorted(FACT_FAMILY)
NO_AGOP = [*FACT_ONLY, "enfa", "benfa"]


def language_model(vocab: int, depth: int, width: int, context: int, n: int, seed: int = 0
                   ) -> tuple[torch.nn.Module, Dataset]:
    """The GPT-2-shaped model (float32, eval) and n random token windows with next-token ids."""
    torch.manual_seed(seed)
    model = build_model({"arch": "transformer", "vocab": vocab, "context": context,
                         "out_features": vocab, "d_model": width, "heads": 4, "depth": depth,
                         "output": "all"}).eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, context + 1), generator=generator)
    return model, Dataset("random tokens", tokens[:, :-1].contiguous(),
                          tokens[:, 1:].contiguous(), n_classes=vocab)


def plain_pass(model: torch.nn.Module, data: Dataset, batch_size: int) -> None:
    """One forward and one backward of the summed loss per batch: what training costs."""
    targets = data.targets("next_token")
    for start in range(0, len(data.x_train), batch_size):
        stop = start + batch_size
        loss = per_sample_loss("next_token", model(data.x_train[start:stop]),
                               targets[start:stop]).sum()
        torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def fact_overhead(args: argparse.Namespace) -> None:
    model, data = language_model(args.vocab, args.depth, args.width, args.T, args.n)
    options = dict(loss="next_token", weight_decay=1e-3, batch_size=args.batch_size,
                   relations=FACT_ONLY, device="cpu")
    plan = prepare(model, data, max_dense=args.max_dense, **options)
    sums = plan.accumulate()
    best = {"plain": float("inf"), "sums": float("inf"), "finish": float("inf")}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits each alike
        best["plain"] = min(best["plain"], timed(lambda: plain_pass(plan.network, data,
                                                                    args.batch_size), 1))
        best["sums"] = min(best["sums"], timed(plan.accumulate, 1))
        best["finish"] = min(best["finish"], timed(lambda: plan.finish(sums), 1))
    total = best["sums"] + best["finish"]
    print(f"(a) vocab {args.vocab}, depth {args.depth}, width {args.width}, T {args.T}, "
          f"n {args.n}, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
          f"best of {args.repeats}; FACT family only, every layer")
    print(f"    plain forward + backward of the summed loss : {best['plain']:.2f} s")
    print(f"    analysis, factored above max_dense {args.max_dense} : {total:.2f} s = "
          f"{total / best['plain']:.2f}x (sums {best['sums']:.2f} s = "
          f"{best['sums'] / best['plain']:.2f}x, relations and metrics {best['finish']:.2f} s)")
    if args.dense:
        dense = prepare(model, data, max_dense=None, **options)
        dense_sums = dense.accumulate()
        finish = timed(lambda: dense.finish(dense_sums), 1)
        print(f"    the same with every matrix dense (max_dense=None): relations and metrics "
              f"{finish:.2f} s, analysis {(best['sums'] + finish) / best['plain']:.2f}x")
    if args.profile:
        profile(lambda: plan.finish(plan.accumulate()))


def sketch_vs_exact(args: argparse.Namespace) -> None:
    import statistics

    model, data = language_model(args.vocab, args.depth, args.width, args.T, args.n_exact)
    common = dict(loss="next_token", weight_decay=1e-4, relations=["agop", "nfa", "bagop",
                                                                   "bnfa"],
                  layers=["blocks.*"], batch_size=args.batch_size, device="cpu")

    def run(**options):
        """The analysis and the seconds of its pass over the data (the relations from the
        sums, 8 jackknife replicas in a sketch, are timed apart)."""
        plan = prepare(model, data, **common, **options)
        start = time.perf_counter()
        sums = plan.accumulate()
        middle = time.perf_counter()
        result = plan.finish(sums)
        finished[options.get("agop_probes")] = time.perf_counter() - middle
        return result, middle - start

    finished: dict = {}
    run(agop_probes=32, outputs="last")  # warm-up (first batched backward)
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
        print(f"    S={probes}: sums {sketch_s:.2f} s, exact/sketch {exact_s / sketch_s:.0f}x "
              f"(relations from the sums: exact {finished['exact']:.2f} s, sketch with its "
              f"jackknife {finished[probes]:.2f} s); "
              f"|Δ metric| median {statistics.median(diffs):.4f}, max {max(diffs):.4f} over "
              f"{len(diffs)} (layer, relation, pearson|cosine); within 3 s.e.: "
              f"{covered}/{len(diffs)}; sums over all {whole.info['agop_outputs']} outputs: "
              f"{whole_s:.2f} s")


def profile(run) -> None:
    """Where the time of one analysis goes: the 15 costliest functions (cumulative)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)


def _peak_above(run) -> float:
    """MiB of peak resident memory (VmHWM, reset first) above the resident memory before."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak to now
        handle.write("5")
    resident = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - resident) / 1024


def memory_child(args: argparse.Namespace) -> None:
    model, data = language_model(args.vocab, args.depth, args.width, args.T, args.n)
    plain = _peak_above(lambda: plain_pass(model, data, args.batch_size))
    engine = _peak_above(lambda: analyze(model, data, loss="next_token", weight_decay=1e-3,
                                         batch_size=args.batch_size, relations=NO_AGOP,
                                         max_dense=args.max_dense, device="cpu",
                                         keep_matrices=args.keep_matrices))
    print(json.dumps({"vocab": args.vocab, "plain_mib": plain, "engine_mib": engine,
                      "process_mib": _status_kib("VmHWM") / 1024}))


def memory(args: argparse.Namespace) -> None:
    print(f"(c) peak memory above the loaded model and data, fresh process per vocabulary; "
          f"depth {args.depth}, width {args.width}, T {args.T}, n {args.n}, batch "
          f"{args.batch_size}, max_dense {args.max_dense}; relations {','.join(NO_AGOP)}; "
          f"matrices kept: {args.keep_matrices}")
    for vocab in args.vocabs:
        command = [sys.executable, __file__, "--part", "memory-child", "--vocab", str(vocab),
                   "--depth", str(args.depth), "--width", str(args.width), "--T",
                   str(args.T), "--n", str(args.n), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), "--max-dense", str(args.max_dense),
                   "--keep-matrices", args.keep_matrices]
        row = json.loads(subprocess.run(command, check=True, capture_output=True,
                                        text=True).stdout)
        print(f"    vocab {row['vocab']:>6}: plain forward+backward {row['plain_mib']:7.0f} MiB,"
              f" analysis {row['engine_mib']:7.0f} MiB (process peak {row['process_mib']:.0f} "
              "MiB)")


PARTS = {"fact": fact_overhead, "sketch": sketch_vs_exact, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="all", choices=["all", *PARTS, "memory-child"])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--n-exact", type=int, default=8, help="samples of part (b)")
    parser.add_argument("--probes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--T", type=int, default=64)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-dense", type=int, default=1024,
                        help="below every vocabulary, so the head's relations are factored")
    parser.add_argument("--keep-matrices", choices=["none", "all"], default="none",
                        help="(c): none = what fact analyze keeps without --report; all = the "
                        "library's default")
    parser.add_argument("--dense", action="store_true", help="(a): also every matrix dense")
    parser.add_argument("--profile", action="store_true", help="(a): profile one analysis")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "memory-child":
        return memory_child(args)
    for name, part in PARTS.items():
        if args.part in ("all", name):
            part(args)


if __name__ == "__main__":
    main()
