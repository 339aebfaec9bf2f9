"""Naive references: per-sample, per-output autograd loops in float64, written independently of
factcli's engine (no shared sums, no batched backward, numpy for matrix functions).

For one layer at a time, the layer's input is replaced by a fresh leaf h' (so ∂/∂h' is the
gradient *through this matrix*), and in a second pass its output by a leaf z'.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _per_sample_loss(loss, out, target):
    if loss == "mse":
        return ((out - target) ** 2).mean()
    return torch.nn.functional.cross_entropy(out.unsqueeze(0), target.view(1))


def _leaf_pass(model, layer, x, which):
    """Forward one sample with the layer's input (which='h') or product (which='z') as a leaf."""
    store = {}

    def pre(module, args):
        leaf = args[0].detach().clone().requires_grad_(True)
        store["h"] = leaf
        return (leaf,)

    def post(module, args, output):
        product = output - (module.bias if module.bias is not None else 0)
        leaf = product.detach().clone().requires_grad_(True)
        store["z"] = leaf
        return leaf + (module.bias if module.bias is not None else 0)

    handle = layer.register_forward_pre_hook(pre) if which == "h" else \
        layer.register_forward_hook(post)
    try:
        out = model(x.unsqueeze(0)).reshape(-1)
    finally:
        handle.remove()
    return out, store[which]


def naive_relations(model: nn.Module, layer: nn.Linear, x, targets, loss, weight_decay,
                    weights=None, alpha=0.5):
    """Every matrix of relations.md §2–3 for `layer`, plus its stationarity, as numpy float64."""
    n = len(x)
    weights = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    W = layer.weight.detach().numpy().astype(np.float64)
    m, k = W.shape
    sums = {name: np.zeros((k, k)) for name in ("fact", "agop", "enfa")}
    sums.update({name: np.zeros((m, m)) for name in ("bfact", "bagop", "benfa")})
    jacobian_rows = {"agop": [], "bagop": []}  # √w_i-weighted rows, for exact matrix powers
    for i in range(n):
        w = weights[i]
        for which, (pair, gram, ograms) in {"h": ("fact", "enfa", "agop"),
                                            "z": ("bfact", "benfa", "bagop")}.items():
            out, leaf = _leaf_pass(model, layer, x[i], which)
            ell = _per_sample_loss(loss, out, targets[i])
            (grad,) = torch.autograd.grad(ell, leaf, retain_graph=True)
            rows_g = grad.reshape(-1, grad.shape[-1]).numpy()
            rows_v = leaf.detach().reshape(-1, leaf.shape[-1]).numpy()
            for t in range(len(rows_g)):
                sums[pair] += -w * np.outer(rows_g[t], rows_v[t]) / weight_decay
                sums[gram] += w * np.outer(rows_g[t], rows_g[t])
            for c in range(out.numel()):
                (jac,) = torch.autograd.grad(out[c], leaf, retain_graph=True)
                rows_j = jac.reshape(-1, jac.shape[-1]).numpy()
                for t in range(len(rows_j)):
                    sums[ograms] += w * np.outer(rows_j[t], rows_j[t])
                    jacobian_rows[ograms].append(np.sqrt(w) * rows_j[t])
    result = dict(sums)
    result["nfm"], result["bnfm"] = W.T @ W, W @ W.T
    for prefix in ("", "b"):
        fact = sums[prefix + "fact"]
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
    grad_w = grad_w.numpy()
    result["stationarity"] = np.linalg.norm(grad_w + weight_decay * W) / np.linalg.norm(
        weight_decay * W)
    return result
