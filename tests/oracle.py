"""Naive references: per-sample, per-output autograd loops in float64, written independently of
factcli's engine (no shared sums, no batched backward, no capture of operations, numpy for
matrix functions).

For one layer at a time, the layer's module is re-implemented here as explicit rows:
h (one row per position: the input vector, a conv patch by `unfold`, a one-hot token) times Wᵀ,
and in one pass h gets a zero perturbation leaf (∂/∂h is then the gradient *through this
matrix*), in a second pass z = W h does. Every call of the module (a shared layer) adds its
rows. FACT and bFACT come from the per-sample gradients of the parameter itself, which count
every use.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _per_sample_loss(loss, out, target):
    """ℓ_i from the sample's flat outputs `out`; integer targets (T,) are one id per position."""
    if target.ndim == 1 and not target.is_floating_point():
        return _per_position_loss(loss, out.reshape(len(target), -1), target)
    if loss == "mse":
        return ((out - target.reshape(-1)) ** 2).mean()
    return torch.nn.functional.cross_entropy(out.unsqueeze(0), target.view(1))


def _per_position_loss(loss, rows, ids):
    """The mean over the positions whose id is not -100 of each position's loss, written out
    (log-sum-exp by hand for cross_entropy/next_token, a one-hot by hand for mse); 0 if none."""
    terms = []
    for row, y in zip(rows, ids.tolist()):
        if y == -100:
            continue
        if loss == "mse":
            hot = torch.zeros_like(row)
            hot[y] = 1.0
            terms.append(((row - hot) ** 2).sum() / len(row))
        else:
            top = row.max().detach()
            terms.append(torch.log(torch.exp(row - top).sum()) + top - row[y])
    return sum(terms) / len(terms) if terms else rows.sum() * 0.0


def weight_matrix(module):
    """W (m×k) of a module, as factcli's docs define it."""
    weight = module.weight
    if isinstance(module, nn.Embedding) or type(module).__name__ == "Conv1D":
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def _rows_forward(module, inp, which, store):
    """The module's output from explicit rows h → z = h Wᵀ, with h or z made a leaf."""
    W = weight_matrix(module)
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Embedding):
        h = F.one_hot(inp.reshape(-1), module.num_embeddings).to(W.dtype)
    elif isinstance(module, nn.Conv2d):
        h = F.unfold(inp, module.kernel_size, module.dilation, module.padding,
                     module.stride)[0].T
    else:  # Linear, HF Conv1D: the last axis is the input vector
        h = inp.reshape(-1, inp.shape[-1])
    if which == "h":
        h = _perturbed(h, store)
    z = h @ W.T
    if which == "z":
        z = _perturbed(z, store)
    if isinstance(module, nn.Embedding):
        return z.reshape(*inp.shape, -1)
    if isinstance(module, nn.Conv2d):
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
            inp.shape[-2:], module.padding, module.dilation, module.kernel_size, module.stride)]
        out = z.T.reshape(1, -1, *size)
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    out = z.reshape(*inp.shape[:-1], -1)
    return out if bias is None else out + bias


def _perturbed(rows, store):
    """rows + δ with δ = 0 a fresh leaf: ∂/∂δ is the total derivative with respect to these
    rows, every later use of the same matrix included (a detached copy would cut that path)."""
    delta = torch.zeros_like(rows, requires_grad=True)
    store.append((delta, rows.detach()))
    return rows + delta


@contextlib.contextmanager
def _explicit(module, which, store):
    module.forward = lambda inp: _rows_forward(module, inp, which, store)
    try:
        yield
    finally:
        del module.forward


def naive_relations(model: nn.Module, layer: nn.Module, x, targets, loss, weight_decay,
                    weights=None, alpha=0.5, probed=None):
    """Every matrix of relations.md §2–3 for `layer`, plus its stationarity, as numpy float64.

    `probed` (output of one sample, shaped as the model returns it → the outputs the AGOP family
    runs over) restricts the Jacobians' outputs; the loss always sees every output."""
    n = len(x)
    weights = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    W = weight_matrix(layer).detach().numpy().astype(np.float64)
    m, k = W.shape
    sums = {name: np.zeros((k, k)) for name in ("fact_uses", "agop", "enfa")}
    sums.update({name: np.zeros((m, m)) for name in ("bfact_uses", "bagop", "benfa")})
    gradient = np.zeros((m, k))
    jacobian_rows = {"agop": [], "bagop": []}  # √w_i-weighted rows, for exact matrix powers
    for i in range(n):
        w = weights[i]
        sample = x[i:i + 1]
        (grad_w,) = torch.autograd.grad(_per_sample_loss(loss, model(sample).reshape(-1),
                                                         targets[i]), layer.weight)
        gradient += w * _as_matrix(layer, grad_w)
        for which, (pair, gram, ograms) in {"h": ("fact_uses", "enfa", "agop"),
                                            "z": ("bfact_uses", "benfa", "bagop")}.items():
            leaves = []
            with _explicit(layer, which, leaves):
                shaped = model(sample)
            out = shaped.reshape(-1)
            ell = _per_sample_loss(loss, out, targets[i])
            if probed is not None:
                out = probed(shaped).reshape(-1)
            deltas = [delta for delta, _ in leaves]
            grads = torch.autograd.grad(ell, deltas, retain_graph=True)
            for grad, (_, value) in zip(grads, leaves):
                rows_g, rows_v = grad.numpy(), value.numpy()
                for t in range(len(rows_g)):
                    sums[pair] += -w * np.outer(rows_g[t], rows_v[t]) / weight_decay
                    sums[gram] += w * np.outer(rows_g[t], rows_g[t])
            for c in range(out.numel()):
                jacs = torch.autograd.grad(out[c], deltas, retain_graph=True)
                for jac in jacs:
                    for row in jac.numpy():
                        sums[ograms] += w * np.outer(row, row)
                        jacobian_rows[ograms].append(np.sqrt(w) * row)
    result = dict(sums)
    result["fact"] = -W.T @ gradient / weight_decay
    result["bfact"] = -gradient @ W.T / weight_decay
    result["nfm"], result["bnfm"] = W.T @ W, W @ W.T
    for prefix in ("", "b"):
        fact = result[prefix + "fact"]
        result[prefix + "fact_sym"] = (fact + fact.T) / 2
        left, singular, _ = np.linalg.svd(fact)
        result[prefix + "fact_sqrt"] = (left * singular) @ left.T
        # AGOP^α = V S^{2α} Vᵀ from the SVD of the stacked Jacobian rows J (AGOP = JᵀJ).
        _, singular, right = np.linalg.svd(np.array(jacobian_rows[prefix + "agop"]),
                                           full_matrices=False)
        result[prefix + "nfa"] = (right.T * singular ** (2 * alpha)) @ right
    model.zero_grad()
    objective = sum(weights[i] * _per_sample_loss(loss, model(x[i:i + 1]).reshape(-1), targets[i])
                    for i in range(n))
    (grad_w,) = torch.autograd.grad(objective, layer.weight)
    grad_w = _as_matrix(layer, grad_w)
    result["stationarity"] = np.linalg.norm(grad_w + weight_decay * W) / np.linalg.norm(
        weight_decay * W)
    return result


def _as_matrix(layer, grad):
    """The parameter's gradient in W's orientation (the same reshape as the weight)."""
    grad = grad.numpy().astype(np.float64)
    if isinstance(layer, nn.Embedding) or type(layer).__name__ == "Conv1D":
        return grad.T
    return grad.reshape(grad.shape[0], -1)


def relative(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)



def naive_fact_adamw(model: nn.Module, layer: nn.Module, x, targets, loss, exp_avg_sq, step,
                     beta2, eps, weight_decay, weights=None):
    """fact_adamw of relations.md §7, −(1/λ) Wᵀ(∇_W L_data ⊘ (√v̂ + ε)) with
    v̂ = exp_avg_sq/(1 − β₂^step), from the per-sample gradients of the parameter, numpy."""
    n = len(x)
    weights = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    gradient = np.zeros(tuple(layer.weight.shape))
    for i in range(n):
        ell = _per_sample_loss(loss, model(x[i:i + 1]).reshape(-1), targets[i])
        (grad_w,) = torch.autograd.grad(ell, layer.weight)
        gradient += weights[i] * grad_w.double().numpy()
    v_hat = exp_avg_sq.double().numpy() / (1.0 - beta2 ** float(step))
    step_matrix = _as_matrix(layer, torch.from_numpy(-gradient / (np.sqrt(v_hat) + eps)))
    W = weight_matrix(layer).detach().double().numpy()
    return W.T @ step_matrix / weight_decay
