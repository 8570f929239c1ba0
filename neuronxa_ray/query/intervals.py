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
BLOCK_ROWS = 256  # rows resampled at a time: 256 x 1,000 sums are 2 MB (a whole chunk's, 16 MB, page-faults)


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


def quantile_positions(m: int, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where numpy.quantile's linear method looks in m sorted values for [(1 - level) / 2, (1 + level) / 2]:
    (previous index, next index, weight of the next), computed as numpy computes them."""
    q = np.asarray([(1 - level) / 2, (1 + level) / 2], dtype=np.float64)
    virtual = (m - 1) * q  # numpy's virtual index for the linear method
    previous = np.floor(virtual)
    following = previous + 1
    previous[virtual >= m - 1] = following[virtual >= m - 1] = m - 1
    previous[virtual < 0] = following[virtual < 0] = 0
    gamma = virtual - np.floor(virtual)
    return previous.astype(np.intp), following.astype(np.intp), gamma


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy.quantile's interpolation between neighbouring order statistics, operation for operation."""
    diff = b - a
    out = a + diff * t
    return b - diff * (1 - t) if t >= 0.5 else out


def integer_sums_interval(sums: np.ndarray, scale: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """[rows, resamples] sums of non-negative integer hits (integer-valued floats) -> (low, high) percentile
    interval of sums / scale per row, equal bit for bit to percentile_interval(sums / scale[:, None], level): the
    order statistics are found by counting (a histogram of each row's sums) instead of partitioning every row,
    then interpolated as numpy interpolates them. Sums of 4096 or more fall back to percentile_interval."""
    rows, m = sums.shape
    top = int(sums.max(initial=0)) + 1
    if not rows or top > 4096:
        return percentile_interval(sums / scale[:, None], level)
    previous, following, gamma = quantile_positions(m, level)
    ks = sorted({*previous.tolist(), *following.tolist()})
    ordered = {k: np.empty(rows) for k in ks}
    step = max(1, (1 << 22) // (m + top))  # rows per block: a few MB of counts at a time
    for start in range(0, rows, step):
        block = sums[start : start + step].astype(np.int64)
        n = len(block)
        block += top * np.arange(n)[:, None]
        cumulative = np.bincount(block.ravel(), minlength=n * top).reshape(n, top).cumsum(axis=1)
        for k in ks:  # the k-th smallest (0-based): the first value whose cumulative count exceeds k
            ordered[k][start : start + n] = (cumulative <= k).sum(axis=1)
    low, high = (_lerp(ordered[previous[i]] / scale, ordered[following[i]] / scale, float(gamma[i])) for i in range(2))
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
    rows = hits.shape[0]
    scale = np.broadcast_to(hits.shape[1] * np.asarray(denominator, dtype=np.float64).reshape(-1), (rows,))
    estimate = hits.sum(axis=1) / scale
    integer = bool(hits.size) and hits.min() >= 0 and np.array_equal(hits, np.floor(hits))  # counts of hits
    low, high = np.empty(rows), np.empty(rows)
    for start in range(0, rows, BLOCK_ROWS):  # rows are independent: a block's resampled sums stay in cache
        part = slice(start, start + BLOCK_ROWS)
        sums = resampled_sums(hits[part], resamples, seed)
        if integer:  # integer sums: order statistics counted
            low[part], high[part] = integer_sums_interval(sums, scale[part], level)
        else:
            low[part], high[part] = percentile_interval(sums / scale[part, None], level)
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


def _numbers(column) -> np.ndarray:
    """A numeric column as float64 (NaN for NULL)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return (
        arr.to_numpy(zero_copy_only=False).astype(np.float64)
        if arr.null_count == 0
        else np.array([np.nan if v is None else v for v in arr.to_pylist()], dtype=np.float64)
    )


def sentence_bootstrap_arrow(hits, denominator, level, resamples, seed) -> pa.StructArray:
    """Vectorized over a chunk: rows with the same number of sentences and settings are gathered into one matrix
    straight from the list column's values (no per-row Python)."""
    arr = hits.combine_chunks() if isinstance(hits, pa.ChunkedArray) else hits
    rows = len(arr)
    out = [np.full(rows, np.nan) for _ in range(3)]
    if not rows:
        return _struct(["estimate", "low", "high"], out, np.zeros(0, dtype=bool))
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = np.diff(offsets)
    den, lv, rs, sd = (_numbers(c) for c in (denominator, level, resamples, seed))
    valid = (lengths > 0) & ~(np.isnan(den) | np.isnan(lv) | np.isnan(rs) | np.isnan(sd))
    if arr.null_count:
        valid &= arr.is_valid().to_numpy(zero_copy_only=False)
    keys = np.stack([lengths, lv, rs, sd], axis=1)[valid]
    rows_valid = np.flatnonzero(valid)
    if len(keys) and (keys == keys[0]).all():  # the usual chunk: one number of sentences, one setting
        unique, inverse = keys[:1], np.zeros(len(keys), dtype=np.intp)
    else:
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    for g, (n, lev, res, sed) in enumerate(unique):
        idx = rows_valid[inverse.reshape(-1) == g]
        matrix = values[offsets[idx][:, None] + np.arange(int(n))]
        est, low, high = sentence_interval(matrix, den[idx], float(lev), int(res), int(sed))
        for target, result in zip(out, (est, low, high)):
            target[idx] = result
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
