"""Hand-run benchmark of data-parallel analysis (not a test): P processes × 1 thread against
1 process × 1 thread, side by side in one run, each run in fresh processes.

    python benchmarks/bench_distributed.py               # n = 40,000, 2 processes
    python benchmarks/bench_distributed.py --n 10000 --repeats 1

Model and data as in bench_analyze.py: 5 Linear layers, ReLU, width 256, 784 inputs, 10 outputs,
float32; the shipped MNIST digits repeated with a seeded jitter; all 12 relations; batches of
1,000. Two timings per run:
(a) the engine: from the loaded model and data to the finished `Analysis` on rank 0 (the pass
    over the rank's share, the all-reduce of the float64 sums, the relations);
(b) the whole command, `fact analyze --nproc P` against `fact analyze`, the data in an .npz
    file (process starts, imports, loading the data in every process included).
Per-rank peak resident memory is read from /proc (VmHWM), total and above the loaded data.
Each rank's CPU time over (a) is reported beside the wall time: on a machine whose cores are
busy with other work the wall clock cannot show a speed-up, the division of the work still can.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(n: int, batch_size: int) -> None:
    """One rank (or the single process): time the engine, report peak memory as JSON."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_analyze import _status_kib, mnist

    from factcli.distributed import environment, reduced_sums
    from factcli.engine.analysis import prepare
    from factcli.models.archs import mlp

    torch.manual_seed(0)
    model = mlp(784, 10, 256, 5).eval()
    data = mnist(n)
    with open("/proc/self/clear_refs", "w") as handle:  # peak (VmHWM) counted from here
        handle.write("5")
    resident = _status_kib("VmRSS")
    started = {}

    def plan(device):
        result = prepare(model, data, loss="mse", weight_decay=1e-4, batch_size=batch_size,
                         device=device)
        started["t"], started["cpu"] = time.perf_counter(), time.process_time()  # pass starts
        return result

    reduced = reduced_sums(plan, "cpu")
    if reduced is not None:
        reduced[0].finish(reduced[1])
    seconds, cpu = time.perf_counter() - started["t"], time.process_time() - started["cpu"]
    place = environment()
    peak = _status_kib("VmHWM")
    print(json.dumps({"rank": place.rank if place else 0, "seconds": seconds, "cpu": cpu,
                      "peak_mib": peak / 1024, "above_data_mib": (peak - resident) / 1024}),
          flush=True)


def engine_run(nproc: int, n: int, batch_size: int) -> list[dict]:
    command = [sys.executable, __file__, "--worker", "--n", str(n), "--batch-size",
               str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:  # the launcher of fact analyze --nproc, starting this script's workers
        script = ("import sys; from factcli.distributed import launch; "
                  f"sys.exit(launch({nproc}, {command!r}))")
        command = [sys.executable, "-c", script]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return sorted((json.loads(line) for line in output.stdout.splitlines()),
                  key=lambda r: r["rank"])


def command_run(nproc: int, checkpoint: Path, data: Path) -> float:
    command = [sys.executable, "-m", "factcli", "analyze", str(checkpoint), "--data",
               f"file:{data}", "--device", "cpu", "-f", "jsonl"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--no-command", action="store_true", help="skip (b)")
    args = parser.parse_args()
    if args.worker:
        worker(args.n, args.batch_size)
        return
    print(f"load before: {os.getloadavg()}")
    print(f"(a) engine, n = {args.n}, {args.nproc} processes × 1 thread vs 1 × 1 "
          f"(best of {args.repeats})")
    single, several = [], []
    for _ in range(args.repeats):  # interleaved, so that a change in load hits both
        single.append(engine_run(1, args.n, args.batch_size))
        several.append(engine_run(args.nproc, args.n, args.batch_size))
    one = min(run[0]["seconds"] for run in single)
    best = min(several, key=lambda run: max(r["seconds"] for r in run))
    many = max(r["seconds"] for r in best)
    print(f"    wall: 1 process {one:.2f} s; {args.nproc} processes {many:.2f} s; "
          f"speed-up {one / many:.2f}×")
    # CPU seconds say how the work divides, whatever else competes for the cores: the speed-up
    # the wall clock shows when every process has a core of its own.
    cpu_one = min(run[0]["cpu"] for run in single)
    cpu_many = max(r["cpu"] for r in best)
    print(f"    CPU time: 1 process {cpu_one:.2f} s; busiest of {args.nproc} ranks "
          f"{cpu_many:.2f} s; ratio {cpu_one / cpu_many:.2f}× (the wall speed-up to expect "
          "with a free core per process)")
    print(f"    peak memory, 1 process: {single[0][0]['peak_mib']:.0f} MiB "
          f"({single[0][0]['above_data_mib']:.0f} above the data)")
    for r in best:
        print(f"    peak memory, rank {r['rank']}: {r['peak_mib']:.0f} MiB "
              f"({r['above_data_mib']:.0f} above the data)")
    if not args.no_command:
        import torch

        sys.path.insert(0, str(HERE))
        import numpy as np
        from bench_analyze import mnist

        from factcli.io.checkpoint import Checkpoint, save_checkpoint
        from factcli.models.archs import mlp

        with tempfile.TemporaryDirectory() as folder:
            data = mnist(args.n)
            np.savez(Path(folder) / "x.npz", x_train=data.x_train.numpy(),
                     y_train=data.y_train.numpy())
            torch.manual_seed(0)
            spec = {"arch": "mlp", "in_features": 784, "out_features": 10, "width": 256,
                    "depth": 5, "activation": "relu", "bias": True}
            checkpoint = Path(folder) / "m.pt"
            save_checkpoint(checkpoint, Checkpoint(spec, mlp(784, 10, 256, 5).state_dict(),
                                                   {"loss": "mse", "weight_decay": 1e-4}))
            times = {1: [], args.nproc: []}
            for _ in range(args.repeats):
                for nproc in times:
                    times[nproc].append(command_run(nproc, checkpoint, Path(folder) / "x.npz"))
            print(f"(b) whole command: fact analyze {min(times[1]):.2f} s, --nproc {args.nproc} "
                  f"{min(times[args.nproc]):.2f} s; speed-up "
                  f"{min(times[1]) / min(times[args.nproc]):.2f}×")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
