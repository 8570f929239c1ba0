"""Bootstrap intervals over sentences for layer-mean scores, as DuckDB functions (sql/25_intervals.sql uses them).

A layer-mean score is a mean over layers of per-layer shares of hits, and the layers of one sentence are
dependent, so the unit that is resampled is the sentence, with all its layers at once. Per sentence i the views
pass h_i, the number of hits over the layers (an integer), and a denominator D (the number of layers, or layers
x languages for a mean over languages): the score is sum(h) / (n D), and resample r's score is
sum_k h[draw[r, k]] / (n D).

The resampling, exactly (an independent implementation reproduces the intervals bit for bit):

    draw = numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))    # sentence positions

Positions index the sentences in sentence order. The same draws serve every score over n sentences, so scores
over the same sentences (languages of one run, two checkpoints) are resampled together: that pairing is what the
paired differences and the mean over languages need. Sums of integer hits are exact in float64 whatever the
order of summation, so a matrix product gives the same resampled scores as gathering the draws.

- sentence_bootstrap(hits INTEGER[], denominator, level, resamples, seed) -> STRUCT(estimate, low, high):
  the percentile interval, numpy.quantile(resampled, [(1 - level) / 2, (1 + level) / 2]) (numpy's default,
  linear interpolation).
- paired_bootstrap(hits_a, hits_b, denominator_a, denominator_b, level, resamples, seed) ->
  STRUCT(score_a, score_b, difference, low, high, p_value): difference = score_b - score_a, resampled with the
  same draws on both sides; percentile interval as above; two-sided bootstrap p-value
  min(1, 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (resamples + 1)), which is never below 2 / (resamples + 1).

A NULL list gives NULL; lists of different lengths (paired) are an error.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

MAX_RESAMPLES = 100_000


def _check(level: float, resamples: int, seed: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"interval level {level!r} must lie strictly between 0 and 1")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples {resamples!r}: allowed 1 to {MAX_RESAMPLES}")
    if seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")


def draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] sentence positions: resample r takes the sentences at draws[r] (with repeats)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


@functools.lru_cache(maxsize=8)
def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] float64: how often each sentence is drawn in each resample (the draws as a matrix)."""
    d = draws(n, resamples, seed)
    flat = (d + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)
    counts.setflags(write=False)
    return counts


def resampled_sums(hits: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[rows, n] integer hits -> [rows, resamples] sums over each resample's sentences (exact: integer-valued)."""
    hits = np.asarray(hits, dtype=np.float64)
    return hits @ resample_counts(hits.shape[1], resamples, seed).T


def percentile_interval(resampled: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """[rows, resamples] -> (low, high) percentile interval per row."""
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return low, high


def bootstrap_p_value(resampled_differences: np.ndarray) -> np.ndarray:
    """[rows, resamples] -> two-sided bootstrap p-value of a difference of zero, per row."""
    b = resampled_differences.shape[1]
    below = 1 + (resampled_differences <= 0).sum(axis=1)
    above = 1 + (resampled_differences >= 0).sum(axis=1)
    return np.minimum(1.0, 2 * np.minimum(below, above) / (b + 1))


def sentence_interval(
    hits: np.ndarray, denominator: np.ndarray | float, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[rows, n] hits per sentence -> (estimate, low, high) of sum(hits) / (n * denominator), per row."""
    _check(level, resamples, seed)
    hits = np.asarray(hits, dtype=np.float64)
    scale = hits.shape[1] * np.asarray(denominator, dtype=np.float64).reshape(-1)
    estimate = hits.sum(axis=1) / scale
    low, high = percentile_interval(resampled_sums(hits, resamples, seed) / scale[:, None], level)
    return estimate, low, high


def paired_interval(
    hits_a: np.ndarray,
    hits_b: np.ndarray,
    denominator_a: np.ndarray | float,
    denominator_b: np.ndarray | float,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Paired [rows, n] hits -> (score_a, score_b, difference b - a, low, high, p_value), per row."""
    _check(level, resamples, seed)
    hits_a, hits_b = np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)
    n = hits_a.shape[1]
    scale_a = n * np.asarray(denominator_a, dtype=np.float64).reshape(-1)
    scale_b = n * np.asarray(denominator_b, dtype=np.float64).reshape(-1)
    score_a, score_b = hits_a.sum(axis=1) / scale_a, hits_b.sum(axis=1) / scale_b
    diff = (
        resampled_sums(hits_b, resamples, seed) / scale_b[:, None]
        - resampled_sums(hits_a, resamples, seed) / scale_a[:, None]
    )
    low, high = percentile_interval(diff, level)
    return score_a, score_b, score_b - score_a, low, high, bootstrap_p_value(diff)


# --- DuckDB glue: vectorized (arrow) functions; rows of one chunk with the same n and settings go in one product


def _lists(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """A list column as one float64 row per value (views of one array; None for NULL)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = arr.values.to_numpy(zero_copy_only=False).astype(np.float64)
    offsets = arr.offsets.to_numpy(zero_copy_only=False).tolist()
    valid = [True] * len(arr) if arr.null_count == 0 else [v is not None for v in arr.to_pylist()]
    return [values[offsets[i] : offsets[i + 1]] if ok else None for i, ok in enumerate(valid)]


def _scalars(column: pa.ChunkedArray) -> list:
    return column.to_pylist()


def _groups(keys: list[tuple]) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = {}
    for row, key in enumerate(keys):
        if key is not None:
            out.setdefault(key, []).append(row)
    return out


def _struct(names: list[str], columns: list[np.ndarray], valid: np.ndarray) -> pa.StructArray:
    arrays = [pa.array(c, pa.float64(), mask=~valid) for c in columns]
    return pa.StructArray.from_arrays(arrays, names=names, mask=pa.array(~valid))


def sentence_bootstrap_arrow(hits, denominator, level, resamples, seed) -> pa.StructArray:
    lists, den = _lists(hits), _scalars(denominator)
    lv, rs, sd = _scalars(level), _scalars(resamples), _scalars(seed)
    rows = len(lists)
    out = [np.full(rows, np.nan) for _ in range(3)]
    valid = np.zeros(rows, dtype=bool)
    keys = [
        None if h is None or not len(h) or None in (d, a, b, c) else (len(h), a, b, c)
        for h, d, a, b, c in zip(lists, den, lv, rs, sd)
    ]
    for (_, lev, res, sed), idx in _groups(keys).items():
        est, low, high = sentence_interval(
            np.stack([lists[i] for i in idx]), np.array([den[i] for i in idx]), lev, res, sed
        )
        for target, values in zip(out, (est, low, high)):
            target[idx] = values
        valid[idx] = True
    return _struct(["estimate", "low", "high"], out, valid)


def paired_bootstrap_arrow(hits_a, hits_b, denominator_a, denominator_b, level, resamples, seed) -> pa.StructArray:
    la, lb = _lists(hits_a), _lists(hits_b)
    da, db = _scalars(denominator_a), _scalars(denominator_b)
    lv, rs, sd = _scalars(level), _scalars(resamples), _scalars(seed)
    rows = len(la)
    out = [np.full(rows, np.nan) for _ in range(6)]
    valid = np.zeros(rows, dtype=bool)
    keys = []
    for a, b, *rest in zip(la, lb, da, db, lv, rs, sd):
        if a is None or b is None or not len(a) or None in rest:
            keys.append(None)
            continue
        if len(a) != len(b):
            raise ValueError(f"paired_bootstrap: {len(a)} sentences on one side, {len(b)} on the other")
        keys.append((len(a), *rest[2:]))
    for (_, lev, res, sed), idx in _groups(keys).items():
        results = paired_interval(
            np.stack([la[i] for i in idx]),
            np.stack([lb[i] for i in idx]),
            np.array([da[i] for i in idx]),
            np.array([db[i] for i in idx]),
            lev,
            res,
            sed,
        )
        for target, values in zip(out, results):
            target[idx] = values
        valid[idx] = True
    return _struct(["score_a", "score_b", "difference", "low", "high", "p_value"], out, valid)
