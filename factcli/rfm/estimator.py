"""Recursive Feature Machines whose feature update is the NFA (AGOP^s) or FACT (relations.md §5).

`RFM(...).fit(X, y)` alternates kernel ridge regression with M_t and a feature update
M_{t+1} = update(M_t), normalizing M by its largest entry after each update; iteration 0 (M = I)
is plain kernel regression. The iteration with the best validation score is kept. Nothing here
prints: per-iteration metrics are in `history_`, messages in `warnings_`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..engine.device import resolve_device, resolve_dtype
from ..engine.linalg import psd_power, sqrt_outer
from ..errors import FactError
from . import kernels

UPDATES = ("nfa", "fact", "fact-geo")
NORMALIZATIONS = ("max", "none")
METHODS = ("kernel", *UPDATES)


def validation_split(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices: a seeded random `val_frac` share held out."""
    if not 0 <= val_frac < 1:
        raise FactError(f"val_frac must lie in [0, 1) (got {val_frac})")
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(val_frac * n))
    if val_frac > 0 and not 0 < held < n:
        raise FactError(f"val_frac {val_frac} leaves no training or validation points of {n}")
    return np.sort(order[held:]), np.sort(order[:held])


def _array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise FactError(f"unsupported {name} type {array.dtype}: use numbers "
                        "(integer class labels for classification, floats for regression)")
    return array


def update_matrix(update: str, M: torch.Tensor, statistic: torch.Tensor,
                  power: float = 1.0) -> torch.Tensor:
    """M_{t+1} before normalization from the statistic (AGOP for nfa, FACT_t otherwise):
    AGOP^s (nfa), (F Fᵀ)^{1/2} (fact), (F M² Fᵀ)^{1/4} (fact-geo).

    fact-geo takes the square root of (FM (FM)ᵀ)^{1/2}, which `sqrt_outer` gets from the SVD of
    FM: eigh of F M² Fᵀ itself would turn round-off ε in its null space into ε^{1/4} (~5 % of
    the largest entry in float32) where M should be zero.
    """
    if update == "nfa":
        return psd_power(statistic, power)
    if update == "fact":
        return sqrt_outer(statistic)
    return psd_power(sqrt_outer(statistic, M), 0.5)


def circulant_share(M: torch.Tensor, blocks: int) -> tuple[float, list[float]]:
    """How block-circulant M is: the share of each block's variance explained by its average
    along the circulant diagonals (j − i mod p), pooled over blocks and per block (row-major).

    Modular arithmetic mod p with inputs [onehot(a), onehot(b)] uses blocks = 2 (relations.md §6).
    """
    size = M.shape[0] // blocks
    if size * blocks != M.shape[0] or M.shape[0] != M.shape[1]:
        raise FactError(f"a {tuple(M.shape)} matrix does not split into {blocks}×{blocks} "
                        "square blocks")
    M = M.double().cpu()
    index = torch.arange(size)
    diagonal = (index[None, :] - index[:, None]) % size
    residuals, spreads = [], []
    for row in range(blocks):
        for column in range(blocks):
            block = M[row * size:(row + 1) * size, column * size:(column + 1) * size]
            means = torch.zeros(size, dtype=M.dtype).index_add_(0, diagonal.flatten(),
                                                                block.flatten()) / size
            residuals.append(float(((block - means[diagonal]) ** 2).sum()))
            spreads.append(float(((block - block.mean()) ** 2).sum()))
    shares = [1 - r / s if s > 0 else float("nan") for r, s in zip(residuals, spreads, strict=True)]
    return 1 - sum(residuals) / sum(spreads), shares


class RFM:
    """A Recursive Feature Machine (scikit-learn style; relations.md §5).

    `iters` counts feature updates, so the history has rows 0..iters. `ridge` is μ in
    α = (K + μI)⁻¹Y (μ = nλ in the objective of relations.md §1); ridge 0 solves least squares.
    Without validation data (`X_val` None and `val_frac` 0) the last iteration is kept.
    `standardize` z-scores features with the statistics of the rows fitted on (after the
    validation split); `row_norm` then scales every row to unit norm (RFM tabular protocol).
    """

    def __init__(self, kernel: str = "laplace", update: str = "fact", bandwidth: float = 10.0,
                 ridge: float = 1e-3, iters: int = 5, power: float = 1.0, center: bool = False,
                 normalization: str = "max", val_frac: float = 0.1, seed: int = 0,
                 standardize: bool = False, row_norm: bool = False, task: str = "auto",
                 device: str = "auto", dtype: str = "float64", batch_size: int | None = None):
        self.kernel, self.update, self.bandwidth, self.ridge = kernel, update, bandwidth, ridge
        self.iters, self.power, self.center = iters, power, center
        self.normalization = normalization
        self.val_frac, self.seed, self.task = val_frac, seed, task
        self.standardize, self.row_norm = standardize, row_norm
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    @property
    def M(self) -> torch.Tensor:
        return self.M_

    # -- input handling -------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.update not in UPDATES:
            raise FactError(f"unknown update {self.update!r}; choose one of: {', '.join(UPDATES)}")
        if self.normalization not in NORMALIZATIONS:
            raise FactError(f"unknown normalization {self.normalization!r}; choose one of: "
                            f"{', '.join(NORMALIZATIONS)}")
        if self.task not in ("auto", "classification", "regression"):
            raise FactError(f"unknown task {self.task!r}; use auto, classification or regression")
        if not self.ridge >= 0:
            raise FactError(f"ridge must be >= 0 (got {self.ridge})")
        if self.iters < 0:
            raise FactError(f"iters must be >= 0 (got {self.iters})")
        if not 0 <= self.val_frac < 1:
            raise FactError(f"val_frac must lie in [0, 1) (got {self.val_frac})")
        if not self.power > 0:
            raise FactError(f"power must be positive (got {self.power})")
        if self.batch_size is not None and self.batch_size < 1:
            raise FactError(f"batch size must be positive (got {self.batch_size})")

    def _features(self, X: Any, name: str = "X") -> torch.Tensor:
        array = _array(X, name)
        if array.ndim != 2:
            raise FactError(f"{name} must be 2-D (samples × features), got shape {array.shape}")
        if hasattr(self, "n_features_in_") and array.shape[1] != self.n_features_in_:
            raise FactError(f"{name} has {array.shape[1]} features, the training data "
                            f"{self.n_features_in_}")
        if not np.isfinite(array).all():
            raise FactError(f"{name} contains NaN or infinite values")
        return torch.as_tensor(array, dtype=self._dtype, device=self._device)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - self.mean_) / self.scale_
        if self.row_norm:
            x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return x

    def _inputs(self, X: Any, name: str = "X") -> torch.Tensor:
        return self._transform(self._features(X, name))

    def _targets(self, y: Any, rows: int, name: str = "y") -> torch.Tensor:
        """Outputs to regress on: one-hot over `classes_` for classification, else y as floats."""
        array = _array(y, name)
        if len(array) != rows:
            raise FactError(f"{name} has {len(array)} rows but the inputs have {rows}")
        if self.classes_ is None:
            if array.ndim > 2 or not np.isfinite(array).all():
                raise FactError(f"{name} must be finite numbers, 1-D or 2-D")
            target = array.reshape(rows, -1)
            return torch.as_tensor(target, dtype=self._dtype, device=self._device)
        if array.ndim != 1 or array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise FactError(f"classification {name} must be a 1-D array of integer labels")
        index = np.searchsorted(self.classes_, array).clip(0, len(self.classes_) - 1)
        known = self.classes_[index] == array
        onehot = np.zeros((rows, len(self.classes_)))
        onehot[np.flatnonzero(known), index[known]] = 1
        return torch.as_tensor(onehot, dtype=self._dtype, device=self._device)

    def _setup(self, X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_params()
        self._device, self._dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        for attribute in ("n_features_in_", "classes_"):
            self.__dict__.pop(attribute, None)
        x = self._features(X)
        labels = _array(y, "y")
        integer = labels.dtype.kind in "biu"
        if self.task == "classification" or (self.task == "auto" and integer):
            self.classes_ = np.unique(labels)
        else:
            self.classes_ = None
        self.n_features_in_ = x.shape[1]
        return x, self._targets(labels, len(x))

    # -- fitting --------------------------------------------------------------------------------

    def _metrics(self, prefix: str, output: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
        mse = float(((output - target) ** 2).mean()) if len(target) else float("nan")
        accuracy = None
        if self.classes_ is not None:
            hits = (output.argmax(1) == target.argmax(1)) & (target.sum(1) > 0)
            accuracy = float(hits.double().mean()) if len(target) else float("nan")
        return {f"{prefix}_acc": accuracy, f"{prefix}_mse": mse}

    def _score_key(self, row: dict[str, Any]) -> tuple[float, ...]:
        if self.classes_ is not None:
            return (row["val_acc"], -row["val_mse"])
        return (-row["val_mse"],)

    def _statistic(self, kernel: kernels.Kernel, x: torch.Tensor, alpha: torch.Tensor,
                   M: torch.Tensor) -> torch.Tensor:
        if self.update == "nfa":
            return kernels.agop(kernel, x, alpha, M, self.center, self.batch_size)
        return kernels.fact(kernel, x, alpha, M, self.batch_size)

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None, *,
            eval_sets: dict[str, tuple[Any, Any]] | None = None,
            callback: Callable[[dict[str, Any]], None] | None = None) -> RFM:
        """Run iterations 0..iters. `eval_sets` ({name: (X, y)}) are only measured, never used
        for selection; `callback` receives each history row as soon as it is complete."""
        x, target = self._setup(X, y)
        if (X_val is None) != (y_val is None):
            raise FactError("give both X_val and y_val, or neither")
        if X_val is None and self.val_frac > 0:
            keep, held = validation_split(len(x), self.val_frac, self.seed)
            x, target, x_val, target_val = x[keep], target[keep], x[held], target[held]
        elif X_val is not None:
            x_val = self._features(X_val, "X_val")
            target_val = self._targets(y_val, len(x_val), "y_val")
        else:
            x_val = target_val = None
        if self.standardize:
            std = x.std(0) if len(x) > 1 else torch.ones_like(x[0])
            self.mean_, self.scale_ = x.mean(0), torch.where(std > 0, std, torch.ones_like(std))
        x = self._transform(x)
        if x_val is not None:
            x_val = self._transform(x_val)
        extra = {}
        for name, (xs, ys) in (eval_sets or {}).items():
            features = self._inputs(xs, f"X_{name}")
            extra[name] = (features, self._targets(ys, len(features), f"y_{name}"))
        kernel = kernels.Kernel(self.kernel, self.bandwidth)
        M = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        self.history_, self.matrices_, self.warnings_ = [], [], []
        self.X_train_ = x
        self.interrupted_ = False
        best_key = None
        try:
            for t in range(self.iters + 1):
                M, best_key, failure = self._iteration(t, kernel, x, target, x_val,
                                                       target_val, extra, M, best_key, callback)
                if failure:
                    self.warnings_.append(f"iteration {t}: {failure}; stopped early")
                    break
        except KeyboardInterrupt:
            if not self.history_:
                raise
            self.interrupted_ = True  # the finished iterations stay usable
            self.warnings_.append(f"interrupted: kept iterations 0..{len(self.history_) - 1}")
        return self

    def _iteration(self, t: int, kernel: kernels.Kernel, x: torch.Tensor, target: torch.Tensor,
                   x_val: torch.Tensor | None, target_val: torch.Tensor | None,
                   extra: dict[str, tuple[torch.Tensor, torch.Tensor]], M: torch.Tensor,
                   best_key: Any, callback: Callable[[dict[str, Any]], None] | None
                   ) -> tuple[torch.Tensor, Any, str | None]:
        """Iteration t with feature matrix M → (M_{t+1}, best key so far, failure). Its results
        are recorded only once complete, so an interrupt leaves the earlier ones consistent."""
        start = time.perf_counter()
        K = kernel.matrix(x, x, M)
        alpha, jitter = kernels.solve(K, target, self.ridge)
        if jitter:
            self.warnings_.append(f"iteration {t}: kernel matrix + ridge not positive "
                                  f"definite; added jitter {jitter:.3g} to its diagonal")
        row: dict[str, Any] = {"iteration": t, **self._metrics("train", K @ alpha, target)}
        del K
        if x_val is not None:
            row.update(self._metrics("val", self._predict(kernel, x_val, alpha, M), target_val))
        else:
            row.update(val_acc=None, val_mse=None)
        for name, (xs, ys) in extra.items():
            row.update(self._metrics(name, self._predict(kernel, xs, alpha, M), ys))
        key = self._score_key(row) if x_val is not None else (t,)
        row.update(max_entry=None, jitter=jitter)
        failure, updated = None, M
        if t < self.iters:
            updated, row["max_entry"], failure = self._next(kernel, x, alpha, M)
        row["seconds"] = time.perf_counter() - start
        self.matrices_.append(M.cpu())
        self.history_.append(row)
        if best_key is None or key > best_key:
            best_key, self.best_iteration_, self.M_, self.alpha_ = key, t, M, alpha
        if callback:
            callback(row)
        return updated, best_key, failure

    def to_pandas(self) -> Any:
        """The per-iteration history as a DataFrame (needs pandas)."""
        from ..engine.results import rows_frame

        return rows_frame(self.history_)

    def __repr__(self) -> str:
        state = (f"fitted: {len(self.history_)} iterations, best {self.best_iteration_}"
                 + (", interrupted" if self.interrupted_ else "")
                 if getattr(self, "history_", None) else "not fitted")
        return (f"RFM(update={self.update!r}, kernel={self.kernel!r}, "
                f"bandwidth={self.bandwidth:g}, ridge={self.ridge:g}, iters={self.iters}; "
                f"{state})")

    def _repr_html_(self) -> str:
        from ..engine.results import html_table

        return html_table(getattr(self, "history_", []), caption=repr(self))

    def _next(self, kernel: kernels.Kernel, x: torch.Tensor, alpha: torch.Tensor,
              M: torch.Tensor) -> tuple[torch.Tensor, float | None, str | None]:
        """(M_{t+1}, the largest entry divided out, or why iterating cannot go on)."""
        statistic = self._statistic(kernel, x, alpha, M)
        if not torch.isfinite(statistic).all():  # eigh/svd would raise on it
            return M, math.nan, f"the {self.update} statistic has non-finite entries"
        try:
            updated = update_matrix(self.update, M, statistic, self.power)
        except torch.linalg.LinAlgError:
            return M, math.nan, f"the {self.update} update did not converge"
        largest = float(updated.abs().max())
        if not np.isfinite(largest) or largest == 0:
            what = "zero" if largest == 0 else "non-finite"
            return M, largest, f"the {self.update} update gave a {what} matrix"
        return (updated / largest if self.normalization == "max" else updated), largest, None

    def plot(self, label: str | None = None) -> Any:
        """A matplotlib Figure: accuracy per iteration and M at the kept one (factcli[plot])."""
        from ..plot.figures import RFMRun, rfm

        return rfm([RFMRun.from_estimator(self, label)])

    # -- prediction -----------------------------------------------------------------------------

    def _predict(self, kernel: kernels.Kernel, x: torch.Tensor, alpha: torch.Tensor,
                 M: torch.Tensor) -> torch.Tensor:
        return kernels.predict(kernel, x, self.X_train_, alpha, M, self.batch_size)

    def decision_function(self, X: Any) -> torch.Tensor:
        """Raw outputs f(x) with the kept M (one column per class for classification)."""
        if not hasattr(self, "alpha_"):
            raise FactError("this RFM is not fitted yet; call fit first")
        kernel = kernels.Kernel(self.kernel, self.bandwidth)
        return self._predict(kernel, self._inputs(X), self.alpha_, self.M_)

    def predict(self, X: Any) -> np.ndarray:
        output = self.decision_function(X)
        if self.classes_ is not None:
            return self.classes_[output.argmax(1).cpu().numpy()]
        output = output.cpu().numpy()
        return output[:, 0] if output.shape[1] == 1 else output

    def score(self, X: Any, y: Any) -> float:
        """Accuracy for classification, R² for regression (as scikit-learn)."""
        output = self.decision_function(X)
        target = self._targets(y, len(output))
        if self.classes_ is not None:
            return self._metrics("test", output, target)["test_acc"]
        residual = ((output - target) ** 2).sum()
        return float(1 - residual / ((target - target.mean(0)) ** 2).sum())


def tabular_protocol(X: Any, y: Any, X_test: Any, y_test: Any, *, kernel: str = "laplace",
                     bandwidth: float = 10.0, ridges: Sequence[float] = (1e-3, 1e-2, 1e-1, 1, 10),
                     row_norms: Sequence[bool] = (False, True), iters: int = 5,
                     power: float = 1.0, val_frac: float = 0.2, seed: int = 0,
                     standardize: bool = True, task: str = "auto", device: str = "auto",
                     dtype: str = "float64",
                     progress: Callable[[str, int, int], None] | None = None
                     ) -> list[dict[str, Any]]:
    """The RFM tabular protocol (relations.md §6): per method, a grid over ridge and row
    normalization, ≤ `iters` updates, the best (setting, iteration) on the validation split
    (the same seeded split for every fit), then its test score. Plain kernel regression
    ("kernel") is iteration 0 of the NFA fits, selected on its own. `seconds` is the time of
    the method's whole grid (for "kernel": of the iterations 0 only)."""
    if not 0 < val_frac < 1:
        raise FactError(f"the tabular protocol needs a validation split: 0 < val_frac < 1 "
                        f"(got {val_frac})")
    candidates: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
    total, done = len(UPDATES) * len(row_norms) * len(ridges), 0
    for update in UPDATES:
        started = time.perf_counter()
        for row_norm in row_norms:
            for ridge in ridges:
                if progress:
                    progress(f"{update} ridge={ridge:g} row_norm={row_norm}", done, total)
                done += 1
                model = RFM(kernel=kernel, update=update, bandwidth=bandwidth, ridge=ridge,
                            iters=iters, power=power, val_frac=val_frac, seed=seed,
                            standardize=standardize, row_norm=row_norm, task=task,
                            device=device, dtype=dtype)
                model.fit(X, y, eval_sets={"test": (X_test, y_test)})
                setting = {"ridge": ridge, "row_norm": row_norm, "model": model}
                if update == "nfa":
                    candidates["kernel"].append({**setting, **model.history_[0]})
                candidates[update].append({**setting, **model.history_[model.best_iteration_]})
        seconds = time.perf_counter() - started
        for row in candidates[update]:
            row["seconds"] = seconds
    kernel_seconds = sum(row["seconds"] for row in candidates["kernel"])  # iteration 0 alone
    for row in candidates["kernel"]:
        row["seconds"] = kernel_seconds
    results = []
    for method in METHODS:
        best = max(candidates[method], key=lambda row: row["model"]._score_key(row))
        results.append({"method": method, **{key: best.get(key) for key in (
            "ridge", "row_norm", "iteration", "val_acc", "test_acc", "val_mse", "test_mse",
            "seconds")}})
    return results
