"""Writer round trips: what goes in comes back, with its schema and version, through pyarrow, polars, DuckDB."""

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from neuronxa_ray.lake import (
    METADATA_KEY,
    SCHEMA_VERSION,
    Lake,
    neuron_counts_table,
    similarity_table,
    slug,
    states_table,
)
from neuronxa_ray.sql import connect


def _states(rng, n=4):
    return {
        "nas": rng.random((n, 2, 6)).astype(np.float32),
        "hidden": rng.normal(size=(n, 3, 5)).astype(np.float32),
    }


@pytest.mark.parametrize("state_dtype", ["float32", "float16"])
def test_states_round_trip(tmp_path, state_dtype):
    rng = np.random.default_rng(0)
    lake = Lake(tmp_path)
    states = _states(rng)
    path = lake.language_file("sentence_states", "org/m", "main", "fra")
    lake.write(
        "sentence_states",
        states_table("org/m", "main", "fra", list("abcd"), [3, 4, 5, 6], states, state_dtype),
        path,
        state_dtype=state_dtype,
    )
    back = lake.read_states("org/m", "main", "fra")
    for method, arr in states.items():
        expected = arr.astype(np.float16).astype(np.float32) if state_dtype == "float16" else arr
        np.testing.assert_array_equal(back[method], expected)
    meta = pq.read_schema(path).metadata
    assert meta[METADATA_KEY].decode() == SCHEMA_VERSION
    df = pl.read_parquet(path)  # readable without this package
    assert df.height == 4 * 2 + 4 * 3 and set(df["sentence_id"]) == set("abcd")
    con = connect(tmp_path)
    assert con.execute("SELECT typeof(state) FROM sentence_states LIMIT 1").fetchone()[0] == "FLOAT[]"
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_similarity_and_counts_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    lake = Lake(tmp_path)
    mats = {"nas": rng.uniform(-1, 1, size=(2, 3, 3)), "hidden_last": rng.uniform(-1, 1, size=(3, 3, 3))}
    mats["nas"][1, 0, 2] = np.nan
    lake.write(
        "similarity",
        similarity_table("m", "c", "eng", "fra", mats),
        lake.language_file("similarity", "m", "c", "fra", "eng"),
    )
    t = pq.read_table(lake.language_file("similarity", "m", "c", "fra", "eng")).to_pylist()
    for row in t:
        expected = mats[row["method"]][row["layer"], row["pivot_sentence"]]
        np.testing.assert_array_equal(np.array(row["cosine"]), expected)
    active = rng.integers(0, 9, size=(2, 4)).astype(float)
    abs_sum = rng.random((2, 4))
    lake.write(
        "neuron_counts",
        neuron_counts_table("m", "c", "fra", active, abs_sum, 9),
        lake.language_file("neuron_counts", "m", "c", "fra"),
    )
    rows = pq.read_table(lake.language_file("neuron_counts", "m", "c", "fra")).to_pylist()
    for r in rows:
        assert r["n_active"] == active[r["layer"], r["neuron"]] and r["abs_sum"] == abs_sum[r["layer"], r["neuron"]]
        assert r["n_tokens"] == 9


def test_done_markers_need_the_same_fingerprint(tmp_path):
    lake = Lake(tmp_path)
    assert not lake.is_done("m", "c", "eng", "fra", "abc")
    lake.mark_done("m", "c", "eng", "fra", "abc", {})
    assert lake.is_done("m", "c", "eng", "fra", "abc")
    assert not lake.is_done("m", "c", "eng", "fra", "other")


def test_slug_is_path_safe_and_keeps_values_apart():
    assert slug("main") == "main"
    assert "/" not in slug("org/model") and slug("org/model") != slug("org_model")


def test_matches_round_trip_with_nulls(tmp_path):
    import torch

    from neuronxa_ray.lake import matches_table
    from neuronxa_ray.scoring import match_stats

    rng = np.random.default_rng(2)
    C = rng.uniform(-1, 1, size=(2, 4, 4))
    C[0, 1, 1] = np.nan  # NaN diagonal: NULL diagonal and ranks
    C[1, :, 2] = np.nan  # a NaN column
    C[1, 2, :] = np.nan
    stats = match_stats(torch.from_numpy(C)).numpy()
    lake = Lake(tmp_path)
    path = lake.language_file("matches", "m", "c", "fra", "eng")
    assert path.relative_to(tmp_path).parts == (
        "matches",
        "model=m",
        "checkpoint=c",
        "pivot_lang=eng",
        "lang=fra",
        "part-0.parquet",
    )
    lake.write("matches", matches_table("m", "c", "eng", "fra", {"nav": stats}), path)
    table = pq.read_table(path)
    assert table.schema.metadata[METADATA_KEY] == SCHEMA_VERSION.encode()
    for row in table.to_pylist():
        layer, i = row["layer"], row["sentence"]
        d = C[layer, i, i]
        assert (row["diagonal"] is None) == bool(np.isnan(d)) and (row["row_rank"] is None) == bool(np.isnan(d))
        if not np.isnan(d):
            assert row["diagonal"] == d and row["row_rank"] == stats["row_rank"][layer, i] >= 1
        assert row["row_hit"] == stats["row_hit"][layer, i] and row["column_hit"] == stats["column_hit"][layer, i]
    with pytest.raises(ValueError, match="per pivot and language"):
        lake.language_file("matches", "m", "c", "fra")
