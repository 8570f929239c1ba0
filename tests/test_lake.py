"""Writer round trips (schema, version; pyarrow, polars, DuckDB) and the lake's guarantees: verified markers,
views that leave out what does not verify, schema-1 rejection, `lake check`, leases for concurrent writers."""

import contextlib
import json
import logging
import threading

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronxa_ray.cli import main
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import (
    METADATA_KEY,
    SCHEMA_VERSION,
    Lake,
    neuron_counts_table,
    similarity_table,
    slug,
    states_table,
)
from neuronxa_ray.query import connect


def _states(rng, n=4):
    return {
        "nas": rng.random((n, 2, 6)).astype(np.float32),
        "hidden": rng.normal(size=(n, 3, 5)).astype(np.float32),
    }


def write_language(lake, lang, rng, pivot="eng", ckpt_fp="base", model="m", ckpt="c", n=4):
    """One language as the worker writes it: states, counts, similarity (not for the pivot), marker last."""
    states = _states(rng, n)
    files = [
        lake.write(
            "sentence_states",
            states_table(model, ckpt, lang, [f"s{i}" for i in range(n)], [3] * n, states),
            lake.language_file("sentence_states", model, ckpt, lang),
        ),
        lake.write(
            "neuron_counts",
            neuron_counts_table(model, ckpt, lang, rng.integers(0, 5, (2, 6)).astype(float), rng.random((2, 6)), 9),
            lake.language_file("neuron_counts", model, ckpt, lang),
        ),
    ]
    if lang != pivot:
        mats = {m: rng.uniform(-1, 1, size=(a.shape[1], n, n)) for m, a in states.items()}
        files.append(
            lake.write(
                "similarity",
                similarity_table(model, ckpt, pivot, lang, mats),
                lake.language_file("similarity", model, ckpt, lang, pivot),
            )
        )
        import torch

        from neuronxa_ray.compute.matching import match_stats
        from neuronxa_ray.lake import matches_table

        stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}  # as the worker does
        files.append(
            lake.write(
                "matches",
                matches_table(model, ckpt, pivot, lang, stats),
                lake.language_file("matches", model, ckpt, lang, pivot),
            )
        )
    info = {"n_sentences": n, "checkpoint_fingerprint": ckpt_fp}
    lake.mark_done(model, ckpt, pivot, lang, f"fp-{lang}", info, files)
    return files


@pytest.mark.parametrize("state_dtype", ["float32", "float16"])
@pytest.mark.parametrize("reader", ["duckdb", "arrow"])
def test_states_round_trip(tmp_path, state_dtype, reader):
    rng = np.random.default_rng(0)
    lake = Lake(tmp_path)
    states = _states(rng)
    path = lake.language_file("sentence_states", "org/m", "main", "fra")
    written = lake.write(
        "sentence_states",
        states_table("org/m", "main", "fra", list("abcd"), [3, 4, 5, 6], states, state_dtype),
        path,
        state_dtype=state_dtype,
    )
    assert written.path == path and written.rows == 4 * 2 + 4 * 3
    assert written.bytes == (tmp_path / path).stat().st_size
    back = lake.read_states("org/m", "main", "fra")
    for method, arr in states.items():
        expected = arr.astype(np.float16).astype(np.float32) if state_dtype == "float16" else arr
        np.testing.assert_array_equal(back[method], expected)
    meta = pq.read_schema(tmp_path / path).metadata
    assert meta[METADATA_KEY].decode() == SCHEMA_VERSION
    df = pl.read_parquet(tmp_path / path)  # readable without this package
    assert df.height == 4 * 2 + 4 * 3 and set(df["sentence_id"]) == set("abcd")
    lake.mark_done("org/m", "main", "fra", "fra", "fp", {"checkpoint_fingerprint": "b"}, [written])
    con = connect(tmp_path, reader=reader)
    assert con.execute("SELECT typeof(state) FROM sentence_states LIMIT 1").fetchone()[0] == "FLOAT[]"
    got = con.execute("SELECT method, sentence, layer, state FROM sentence_states").fetchall()
    assert len(got) == written.rows
    for method, sentence, layer, state in got:
        expected = states[method][sentence, layer]
        np.testing.assert_array_equal(
            np.float32(state), expected.astype(np.float16) if state_dtype == "float16" else expected
        )
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_similarity_and_counts_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    lake = Lake(tmp_path)
    mats = {"nas": rng.uniform(-1, 1, size=(2, 3, 3)), "hidden_last": rng.uniform(-1, 1, size=(3, 3, 3))}
    mats["nas"][1, 0, 2] = np.nan
    path = lake.language_file("similarity", "m", "c", "fra", "eng")
    lake.write("similarity", similarity_table("m", "c", "eng", "fra", mats), path)
    for row in pq.read_table(tmp_path / path).to_pylist():
        expected = mats[row["method"]][row["layer"], row["pivot_sentence"]]
        np.testing.assert_array_equal(np.array(row["cosine"]), expected)
    active = rng.integers(0, 9, size=(2, 4)).astype(float)
    abs_sum = rng.random((2, 4))
    path = lake.language_file("neuron_counts", "m", "c", "fra")
    lake.write("neuron_counts", neuron_counts_table("m", "c", "fra", active, abs_sum, 9), path)
    for r in pq.read_table(tmp_path / path).to_pylist():
        assert r["n_active"] == active[r["layer"], r["neuron"]] and r["abs_sum"] == abs_sum[r["layer"], r["neuron"]]
        assert r["n_tokens"] == 9


def test_relative_lake_is_absolute_and_pickles_as_its_uri(tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    lake = Lake("sub/lake")
    assert lake.uri == str(tmp_path / "sub" / "lake")
    assert pickle.loads(pickle.dumps(lake)).uri == lake.uri


def test_markers_verify_files_and_fingerprints(tmp_path, caplog):
    rng = np.random.default_rng(2)
    lake = Lake(tmp_path)
    assert not lake.is_done("m", "c", "eng", "fra", "fp-fra") and lake.completion("m", "c", "eng", "fra") is None
    for lang in ("eng", "fra", "deu"):
        write_language(lake, lang, rng)
    assert lake.is_done("m", "c", "eng", "fra", "fp-fra") and not lake.is_done("m", "c", "eng", "fra", "other")
    record = lake.completion("m", "c", "eng", "fra")
    assert record["checkpoint_fingerprint"] == "base" and {f["table"] for f in record["files"]} == {
        "sentence_states",
        "neuron_counts",
        "similarity",
        "matches",
    }
    # a truncated file: the marker no longer verifies, the language is redone and left out of every view
    sim = tmp_path / lake.language_file("similarity", "m", "c", "fra", "eng")
    sim.write_bytes(sim.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        assert not lake.is_done("m", "c", "eng", "fra", "fp-fra")
    assert "similarity" in caplog.text and "bytes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        con = connect(tmp_path)
    assert "fra" in caplog.text
    assert con.execute("SELECT DISTINCT lang FROM similarity").fetchall() == [("deu",)]
    assert sorted(con.execute("SELECT DISTINCT lang FROM sentence_states").fetchall()) == [("deu",), ("eng",)]
    assert con.execute("SELECT count(DISTINCT lang) FROM alignment").fetchone()[0] == 1
    # same size, other row count: rewrite the states of deu with fewer sentences, pad to the recorded size
    states_rel = lake.language_file("sentence_states", "m", "c", "deu")
    recorded = next(f for f in lake.completion("m", "c", "eng", "deu")["files"] if f["path"] == states_rel)
    lake.write("sentence_states", states_table("m", "c", "deu", ["a"], [3], _states(rng, 1)), states_rel)
    (tmp_path / states_rel).write_bytes((tmp_path / states_rel).read_bytes().rjust(recorded["bytes"], b"\0"))
    assert (tmp_path / states_rel).stat().st_size == recorded["bytes"]
    assert lake.completion("m", "c", "eng", "deu") is None


def test_views_leave_out_languages_computed_with_other_settings(tmp_path, caplog):
    rng = np.random.default_rng(3)
    lake = Lake(tmp_path)
    write_language(lake, "eng", rng, ckpt_fp="A")
    write_language(lake, "fra", rng, ckpt_fp="A")
    write_language(lake, "deu", rng, ckpt_fp="B")  # another run, other weights or settings
    with caplog.at_level(logging.WARNING):
        con = connect(tmp_path)
    assert "deu" in caplog.text and "other settings" in caplog.text
    assert con.execute("SELECT DISTINCT lang FROM alignment").fetchall() == [("fra",)]
    problems = lake.check()
    assert [(p.kind, p.path) for p in problems] == [("stale", lake.done_marker("m", "c", "eng", "deu"))]


def test_unreadable_runs_file_is_skipped_and_others_still_query(tmp_path, caplog):
    rng = np.random.default_rng(4)
    lake = Lake(tmp_path)
    for lang in ("eng", "fra"):
        write_language(lake, lang, rng)
    bench = lake.write_benchmarks("belebele", pa.table({"benchmark": ["b"], "lang": ["fra"], "value": [0.5]}))
    (tmp_path / "runs" / "model=m").mkdir(parents=True)
    (tmp_path / "runs" / "model=m" / "broken.parquet").write_bytes(b"PAR1 not really")
    attempts = lake.write_attempts(
        "r1",
        0,
        [{"run_id": "r1", "model": "m", "checkpoint": "c", "lang": "fra", "attempt": 1, "status": "ok"}],
    )
    with caplog.at_level(logging.WARNING):
        con = connect(tmp_path)
    assert "broken.parquet" in caplog.text
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert con.execute("SELECT lang, value FROM benchmarks").fetchall() == [("fra", 0.5)]
    assert con.execute("SELECT lang, attempt, status FROM attempts").fetchall() == [("fra", 1, "ok")]
    assert con.execute("SELECT count(*) FROM alignment").fetchone()[0] > 0
    assert bench.path == "benchmarks/belebele.parquet" and attempts.rows == 1


def test_schema_1_lake_is_rejected(tmp_path):
    old = tmp_path / "_done" / "model=m" / "checkpoint=c" / "pivot=eng"
    old.mkdir(parents=True)
    (old / "lang=fra.json").write_text(json.dumps({"fingerprint": "x"}))
    with pytest.raises(NeuronxaError, match=r"schema 1 .*rerun into a new lake"):
        connect(tmp_path)
    with pytest.raises(NeuronxaError, match="schema 1"):
        Lake(tmp_path).check_writable()


def test_lake_check_lists_and_repairs_exactly_the_broken(tmp_path, capsys):
    rng = np.random.default_rng(5)
    lake = Lake(tmp_path)
    for lang in ("eng", "fra", "deu"):
        write_language(lake, lang, rng)
    assert main(["lake", "check", "--lake", str(tmp_path)]) == 0
    counts = tmp_path / lake.language_file("neuron_counts", "m", "c", "fra")
    counts.unlink()  # a missing file
    orphan = tmp_path / "similarity" / "model=m" / "checkpoint=c" / "pivot_lang=eng" / "lang=ita" / "part-0.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    tmp = counts.parent / ".part-0.parquet.abc.tmp"
    tmp.write_bytes(b"y")
    assert main(["lake", "check", "--lake", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "broken" in out and "lang=fra" in out and "orphaned" in out and "lang=ita" in out and "temporary" in out
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert not orphan.exists() and not tmp.exists()
    assert not (tmp_path / lake.done_marker("m", "c", "eng", "fra")).exists()
    assert not (tmp_path / lake.language_file("similarity", "m", "c", "fra", "eng")).exists()
    assert lake.is_done("m", "c", "eng", "deu", "fp-deu") and lake.is_done("m", "c", "eng", "eng", "fp-eng")
    assert main(["lake", "check", "--lake", str(tmp_path)]) == 0


def test_check_writable_names_the_lake_and_cause(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NeuronxaError, match=r"lake .*file.* is a file"):
        Lake(tmp_path / "file" / "lake").check_writable()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    import os

    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(NeuronxaError, match="not writable"):
            Lake(ro / "lake").check_writable()


def test_leases_refuse_other_settings_and_take_over_stale(tmp_path):
    lake = Lake(tmp_path)
    a = lake.acquire("m", "c", "A", "run-a")
    b = lake.acquire("m", "c", "A", "run-b")  # same settings: both may write (identical bytes)
    with pytest.raises(NeuronxaError, match="run-a"):
        lake.acquire("m", "c", "B", "run-c")
    lake.acquire("m", "other", "B", "run-d").release()  # another checkpoint is free
    a.release()
    b.release()
    lake.acquire("m", "c", "B", "run-e").release()  # released: free again
    dead = lake.acquire("m", "c", "A", "run-dead", timeout_s=0.0)  # no heartbeat within 0 s: stale at once
    lake.acquire("m", "c", "B", "run-f").release()
    assert not (tmp_path / dead.path).exists()


def test_racing_conflicting_leases_never_both_win(tmp_path):
    lake = Lake(tmp_path)
    for trial in range(10):
        won, barrier = [], threading.Barrier(2)

        def go(fp, trial=trial, won=won, barrier=barrier):
            barrier.wait()
            with contextlib.suppress(NeuronxaError):
                won.append(lake.acquire("m", f"c{trial}", fp, f"{fp}-{trial}"))

        threads = [threading.Thread(target=go, args=(fp,)) for fp in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) <= 1
        for lease in won:
            lease.release()


def test_concurrent_writers_of_the_same_languages_leave_each_once(tmp_path):
    """Two jobs (threads) writing the same model twice and another model: every language once, consistent."""
    lake = Lake(tmp_path)

    def job(model, seed):
        with lake.acquire(model, "c", "base", f"run-{model}-{seed}"):
            for i, lang in enumerate(("eng", "fra", "deu")):  # the same settings write the same bytes
                write_language(lake, lang, np.random.default_rng(i), model=model)

    threads = [threading.Thread(target=job, args=(m, s)) for m, s in (("m", 1), ("m", 2), ("m2", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lake.check() == []
    con = connect(tmp_path)
    rows = con.execute("SELECT model, lang, count(*) FROM neuron_counts GROUP BY ALL ORDER BY ALL").fetchall()
    assert [r[:2] for r in rows] == [
        ("m", "deu"),
        ("m", "eng"),
        ("m", "fra"),
        ("m2", "deu"),
        ("m2", "eng"),
        ("m2", "fra"),
    ]
    assert len({r[2] for r in rows}) == 1


def test_slug_is_path_safe_and_keeps_values_apart():
    assert slug("main") == "main"
    assert "/" not in slug("org/model") and slug("org/model") != slug("org_model")


def test_matches_round_trip_with_nulls(tmp_path):
    import torch

    from neuronxa_ray.compute.matching import match_stats
    from neuronxa_ray.lake import matches_table

    rng = np.random.default_rng(2)
    C = rng.uniform(-1, 1, size=(2, 4, 4))
    C[0, 1, 1] = np.nan  # NaN diagonal: NULL diagonal and ranks
    C[1, :, 2] = np.nan  # a NaN column
    C[1, 2, :] = np.nan
    stats = match_stats(torch.from_numpy(C)).numpy()
    lake = Lake(tmp_path)
    path = lake.language_file("matches", "m", "c", "fra", "eng")
    assert path == "matches/model=m/checkpoint=c/pivot_lang=eng/lang=fra/part-0.parquet"
    lake.write("matches", matches_table("m", "c", "eng", "fra", {"nav": stats}), path)
    table = pq.read_table(tmp_path / path)
    assert table.schema.metadata[METADATA_KEY] == SCHEMA_VERSION.encode()
    for row in table.to_pylist():
        layer, i = row["layer"], row["sentence"]
        d = C[layer, i, i]
        assert (row["diagonal"] is None) == bool(np.isnan(d)) and (row["row_rank"] is None) == bool(np.isnan(d))
        if not np.isnan(d):
            assert row["diagonal"] == d and row["row_rank"] == stats["row_rank"][layer, i] >= 1
        assert row["row_hit"] == stats["row_hit"][layer, i] and row["column_hit"] == stats["column_hit"][layer, i]
    with pytest.raises(NeuronxaError, match="per pivot and language"):
        lake.language_file("matches", "m", "c", "fra")


def test_a_language_at_another_precision_than_its_pivot_is_left_out(tmp_path, caplog):
    """dtype/device auto resolve where the actor runs: bfloat16 on a GPU, float32 on a CPU. A language computed at
    another precision than its pivot never joins its scores."""
    rng = np.random.default_rng(4)
    lake = Lake(tmp_path)
    for lang in ("eng", "fra", "deu"):
        write_language(lake, lang, rng)
    record = lake.completion("m", "c", "eng", "deu")
    from neuronxa_ray.lake import WrittenFile

    files = [WrittenFile(f["path"], f["bytes"], f["rows"], f["table"]) for f in record["files"]]
    for lang, precision in (("eng", "cpu/float32"), ("fra", "cpu/float32"), ("deu", "cuda/bfloat16")):
        rec = lake.completion("m", "c", "eng", lang)
        lang_files = [WrittenFile(f["path"], f["bytes"], f["rows"], f["table"]) for f in rec["files"]]
        info = {"checkpoint_fingerprint": "base", "precision": precision}
        lake.mark_done("m", "c", "eng", lang, f"fp-{lang}", info, lang_files if lang != "deu" else files)
    with caplog.at_level(logging.WARNING):
        con = connect(tmp_path)
    assert con.execute("SELECT DISTINCT lang FROM alignment").fetchall() == [("fra",)]
    assert "cuda/bfloat16" in caplog.text and "--force" in caplog.text
    assert [p.kind for p in lake.check()] == ["stale"]
