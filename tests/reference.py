"""The plain reference every fast path is checked against: one sentence at a time, float64, explicit loops.

Written from the method's definition (README, "The method, as implemented"; Huang et al. 2025), sharing no code
with the package's extraction or scoring: its own hooks capture full per-token activations, then states, cosines
and hits are computed in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def reference_states(model, tokenizer, modules, texts, hook_site="act"):
    """Per method, [n, layers, dim] float64 states; plus per-layer neuron counters and the token total."""
    captured = {}
    handles = []
    for layer, module in enumerate(modules):
        if hook_site == "act":
            handles.append(
                module.register_forward_hook(
                    lambda m, a, o, i=layer: captured.__setitem__(i, o[0].detach().double().numpy())
                )
            )
        else:
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, a, i=layer: captured.__setitem__(i, a[0][0].detach().double().numpy())
                )
            )
    out = {"nas": [], "nav": [], "hidden": [], "hidden_last": []}
    n_active = abs_sum = None
    n_tokens = 0
    try:
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            T = len(ids)
            with torch.no_grad():
                res = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
            w = [t / (T * (T + 1) / 2) for t in range(1, T + 1)]
            nas, nav = [], []
            for layer in range(len(modules)):
                a = captured[layer]  # [T, d_ff]
                s_nas = np.zeros(a.shape[1])
                s_nav = np.zeros(a.shape[1])
                for t in range(T):
                    s_nas += w[t] * (a[t] > 0)
                    s_nav += w[t] * np.abs(a[t])
                nas.append(s_nas)
                nav.append(s_nav)
                if n_active is None:
                    n_active = np.zeros((len(modules), a.shape[1]))
                    abs_sum = np.zeros((len(modules), a.shape[1]))
                n_active[layer] += (a > 0).sum(0)
                abs_sum[layer] += np.abs(a).sum(0)
            hidden, last = [], []
            for h in res.hidden_states:
                h = h[0].double().numpy()
                acc = np.zeros(h.shape[1])
                for t in range(T):
                    acc += w[t] * h[t]
                hidden.append(acc)
                last.append(h[T - 1])
            out["nas"].append(nas)
            out["nav"].append(nav)
            out["hidden"].append(hidden)
            out["hidden_last"].append(last)
            n_tokens += T
    finally:
        for h in handles:
            h.remove()
    states = {k: np.array(v) for k, v in out.items()}
    return states, n_active, abs_sum, n_tokens


def cosine(u, v) -> float:
    nu, nv = math.sqrt(float(np.dot(u, u))), math.sqrt(float(np.dot(v, v)))
    if nu == 0 or nv == 0 or math.isnan(nu) or math.isnan(nv):
        return float("nan")
    return float(np.dot(u, v)) / (nu * nv)


def cosine_matrix(P, X) -> np.ndarray:
    """P [n, dim], X [m, dim] -> [n, m], NaN where a state is zero."""
    return np.array([[cosine(p, x) for x in X] for p in P])


def _beats_all(value, others) -> bool:
    if math.isnan(value):
        return False
    return all(math.isnan(o) or value > o for o in others)


def row_hits(C) -> list[bool]:
    n = len(C)
    return [_beats_all(C[i][i], [C[i][j] for j in range(n) if j != i]) for i in range(n)]


def column_hits(C) -> list[bool]:
    n = len(C)
    return [_beats_all(C[i][i], [C[j][i] for j in range(n) if j != i]) for i in range(n)]


def mutual_nn_score(C) -> float:
    rows, cols = row_hits(C), column_hits(C)
    return sum(r and c for r, c in zip(rows, cols)) / len(C)


def retrieval_accuracy(C, direction: str) -> float:
    hits = row_hits(C) if direction == "pivot_to_lang" else column_hits(C)
    return sum(hits) / len(C)


def average_ranks(values) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
