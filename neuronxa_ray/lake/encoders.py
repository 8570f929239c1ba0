"""Rows in and out: numpy arrays as a table's columns (no Python loop per row), and stored states back as arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neuronxa_ray.lake.schema import MATCH_COLUMNS


def list_array(values: np.ndarray, dtype: pa.DataType) -> pa.ListArray:
    """[rows, dim] numpy -> a list<dtype> column without a Python loop."""
    rows, dim = values.shape
    offsets = pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=dtype))


def states_table(
    model: str,
    checkpoint: str,
    lang: str,
    sentence_ids: list[str],
    token_counts: list[int],
    states: dict[str, np.ndarray],
    state_dtype: str = "float32",
) -> dict[str, Any]:
    """Columns of sentence_states for one language; states[method] is [n, layers, dim]."""
    cols: dict[str, list] = {k: [] for k in ("method", "sentence", "layer", "state")}
    for method, arr in states.items():
        n, n_layers, dim = arr.shape
        cols["method"].append(np.full(n * n_layers, method, dtype=object))
        cols["sentence"].append(np.repeat(np.arange(n, dtype=np.int32), n_layers))
        cols["layer"].append(np.tile(np.arange(n_layers, dtype=np.int16), n))
        kind = (np.float16, pa.float16()) if state_dtype == "float16" else (np.float32, pa.float32())
        flat = np.ascontiguousarray(arr, dtype=kind[0]).reshape(n * n_layers, dim)
        cols["state"].append(list_array(flat, kind[1]))
    sentence = np.concatenate(cols["sentence"])
    rows = len(sentence)
    return {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "sentence": sentence,
        "sentence_id": pa.array([sentence_ids[i] for i in sentence], pa.string()),
        "method": pa.array(np.concatenate(cols["method"]), pa.string()),
        "layer": np.concatenate(cols["layer"]),
        "n_tokens": pa.array(np.asarray(token_counts, dtype=np.int32)[sentence]),
        "state": pa.concat_arrays(cols["state"]),
    }


def neuron_counts_table(
    model: str, checkpoint: str, lang: str, n_active: np.ndarray, abs_sum: np.ndarray, n_tokens: int
) -> dict[str, Any]:
    """Columns of neuron_counts; n_active and abs_sum are [layers, d_ff]."""
    n_layers, d_ff = n_active.shape
    rows = n_layers * d_ff
    return {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "layer": np.repeat(np.arange(n_layers, dtype=np.int16), d_ff),
        "neuron": np.tile(np.arange(d_ff, dtype=np.int32), n_layers),
        "n_active": np.rint(n_active).astype(np.int64).reshape(-1),
        "abs_sum": abs_sum.astype(np.float64).reshape(-1),
        "n_tokens": np.full(rows, n_tokens, dtype=np.int64),
    }


def perplexity_table(
    model: str,
    checkpoint: str,
    pivot: str,
    lang: str,
    sentence_ids: list[str],
    nll_sum: np.ndarray,
    n_predicted: np.ndarray,
    base_model: str,
    intervention: str,
    switched_off: str | None,
    n_neurons: int,
) -> dict[str, Any]:
    """Columns of perplexity: one row per sentence, its NLL sum and predicted-token count."""
    n = len(sentence_ids)
    return {
        "model": pa.array([model] * n, pa.string()),
        "checkpoint": pa.array([checkpoint] * n, pa.string()),
        "pivot_lang": pa.array([pivot] * n, pa.string()),
        "lang": pa.array([lang] * n, pa.string()),
        "sentence": np.arange(n, dtype=np.int32),
        "sentence_id": pa.array(sentence_ids, pa.string()),
        "nll_sum": np.asarray(nll_sum, dtype=np.float64),
        "n_predicted": np.asarray(n_predicted, dtype=np.int32),
        "base_model": pa.array([base_model] * n, pa.string()),
        "intervention": pa.array([intervention] * n, pa.string()),
        "switched_off": pa.array([switched_off] * n, pa.string()),
        "n_neurons": np.full(n, n_neurons, dtype=np.int32),
    }


def similarity_table(
    model: str, checkpoint: str, pivot: str, lang: str, matrices: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Columns of similarity; matrices[method] is [layers, n_pivot, n_lang] float64 (row i = pivot sentence i)."""
    methods, layers, rows_i, cosine = [], [], [], []
    for method, mats in matrices.items():
        n_layers, n, m = mats.shape
        methods.append(np.full(n_layers * n, method, dtype=object))
        layers.append(np.repeat(np.arange(n_layers, dtype=np.int16), n))
        rows_i.append(np.tile(np.arange(n, dtype=np.int32), n_layers))
        cosine.append(list_array(np.ascontiguousarray(mats, dtype=np.float64).reshape(n_layers * n, m), pa.float64()))
    rows = sum(len(x) for x in methods)
    return {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "pivot_lang": pa.array([pivot] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "method": pa.array(np.concatenate(methods), pa.string()),
        "layer": np.concatenate(layers),
        "pivot_sentence": np.concatenate(rows_i),
        "cosine": pa.concat_arrays(cosine),
    }


def matches_table(
    model: str, checkpoint: str, pivot: str, lang: str, stats: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Columns of matches; stats[method] holds scoring.MatchStats arrays ([layers, n] each; NaN / -1 become NULL)."""
    cols: dict[str, list] = {k: [] for k in ("method", "layer", "sentence", *MATCH_COLUMNS)}
    for method, st in stats.items():
        n_layers, n = st["diagonal"].shape
        cols["method"].append(np.full(n_layers * n, method, dtype=object))
        cols["layer"].append(np.repeat(np.arange(n_layers, dtype=np.int16), n))
        cols["sentence"].append(np.tile(np.arange(n, dtype=np.int32), n_layers))
        for key in MATCH_COLUMNS:
            cols[key].append(np.asarray(st[key]).reshape(-1))
    flat = {k: np.concatenate(v) for k, v in cols.items()}
    rows = len(flat["sentence"])
    out: dict[str, Any] = {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "pivot_lang": pa.array([pivot] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "method": pa.array(flat["method"], pa.string()),
        "layer": flat["layer"],
        "sentence": flat["sentence"],
    }
    for key in ("diagonal", "row_rival", "column_rival"):
        values = flat[key].astype(np.float64)
        out[key] = pa.array(values, pa.float64(), mask=np.isnan(values))
    for key in ("row_hit", "column_hit"):
        out[key] = pa.array(flat[key].astype(bool), pa.bool_())
    for key in ("row_rank", "column_rank"):
        values = flat[key].astype(np.int32)
        out[key] = pa.array(values, pa.int32(), mask=values < 1)
    return out


def states_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """method -> [n, layers, dim] float32 states from sentence_states rows (sentence, method, layer, state)."""
    out: dict[str, np.ndarray] = {}
    methods = table.column("method").to_numpy(zero_copy_only=False)
    for method in dict.fromkeys(methods):
        sub = table.filter(pc.equal(table.column("method"), method))
        sent = sub.column("sentence").to_numpy()
        layer = sub.column("layer").to_numpy()
        values = sub.column("state").combine_chunks().flatten().to_numpy().astype(np.float32)
        dim = len(values) // len(sent)
        arr = np.zeros((sent.max() + 1, layer.max() + 1, dim), dtype=np.float32)
        arr[sent, layer] = values.reshape(len(sent), dim)
        out[str(method)] = arr
    return out
