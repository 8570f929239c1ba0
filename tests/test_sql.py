"""Every SQL view against numpy on small fixtures, with planted ties, zero states and NaN."""

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch
from reference import average_ranks, cosine_matrix, mutual_nn_score, retrieval_accuracy

from neuronxa_ray.compute.matching import cosine_matrices, match_stats
from neuronxa_ray.lake import Lake, WrittenFile, matches_table, neuron_counts_table, similarity_table, states_table
from neuronxa_ray.query import connect

MODEL, CKPT = "org/tiny-model", "main"
LANGS = ["deu", "eng", "fra"]
N, LAYERS, DIM = 7, 3, 5


def _states(rng):
    """method -> lang -> [N, LAYERS, DIM]; related languages share a base plus noise; some planted cases."""
    out = {}
    for method, dim in (("nas", DIM), ("hidden", DIM + 2)):
        base = rng.normal(size=(N, LAYERS, dim))
        per = {lang: base + rng.normal(scale=s, size=base.shape) for lang, s in zip(LANGS, (0.6, 0.0, 0.9))}
        per["fra"][2, 1] = 0.0  # a zero state: never hits, never wins
        per["deu"][4] = per["deu"][5]  # two identical sentences: ties in their columns
        out[method] = per
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("lake")
    lk = Lake(root)
    states = _states(rng)
    ids = [f"u{i}" for i in range(N)]
    for lang in LANGS:
        host = {m: states[m][lang].astype(np.float32) for m in states}
        lk.write(
            "sentence_states",
            states_table(MODEL, CKPT, lang, ids, [5] * N, host),
            lk.language_file("sentence_states", MODEL, CKPT, lang),
        )
        if lang != "eng":
            mats = {
                m: cosine_matrices(torch.from_numpy(host_eng), torch.from_numpy(host[m])).numpy()
                for m, host_eng in ((m, states[m]["eng"].astype(np.float32)) for m in states)
            }
            if lang == "deu":  # a planted exact tie on a diagonal, and a NaN rival that must not win
                mats["nas"][0, 3, 1] = mats["nas"][0, 3, 3]
                mats["nas"][1, 2, 0] = np.nan
            lk.write(
                "similarity",
                similarity_table(MODEL, CKPT, "eng", lang, mats),
                lk.language_file("similarity", MODEL, CKPT, lang, "eng"),
            )
            stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}  # as the worker does
            lk.write(
                "matches",
                matches_table(MODEL, CKPT, "eng", lang, stats),
                lk.language_file("matches", MODEL, CKPT, lang, "eng"),
            )
    counts = {}
    for lang in LANGS:
        n_tokens = int(rng.integers(50, 100))
        active = rng.integers(0, n_tokens + 1, size=(LAYERS, DIM)).astype(float)
        active[0, 0] = 0 if lang != "eng" else n_tokens  # a neuron that fires for English only
        abs_sum = rng.uniform(0, 3, size=(LAYERS, DIM)) * n_tokens
        counts[lang] = (active, abs_sum, n_tokens)
        lk.write(
            "neuron_counts",
            neuron_counts_table(MODEL, CKPT, lang, active, abs_sum, n_tokens),
            lk.language_file("neuron_counts", MODEL, CKPT, lang),
        )
    for lang in LANGS:  # completion markers, last: views read only languages whose marker verifies
        files = [
            WrittenFile(p, (root / p).stat().st_size, pq.read_metadata(root / p).num_rows, t)
            for t in ("sentence_states", "neuron_counts", "similarity", "matches")
            for p in lk.files(t)
            if f"lang={lang}/" in p
        ]
        lk.mark_done(MODEL, CKPT, "eng", lang, f"fp-{lang}", {"checkpoint_fingerprint": "fp"}, files)
    yield {"root": root, "states": states, "counts": counts, "con": connect(root)}


def _matrices_from_lake(con, method, lang, layer):
    rows = con.execute(
        """SELECT pivot_sentence, cosine FROM similarity WHERE method = ? AND lang = ? AND layer = ?
           ORDER BY pivot_sentence""",
        [method, lang, layer],
    ).fetchall()
    return np.array([r[1] for r in rows], dtype=float)


def test_similarity_round_trips_and_cells_view_unnests_it(lake):
    con = lake["con"]
    C = _matrices_from_lake(con, "hidden", "fra", 1)
    assert C.shape == (N, N)
    cells = con.execute(
        "SELECT i, j, cosine FROM similarity_cells WHERE method='hidden' AND lang='fra' AND layer=1"
    ).fetchall()
    assert len(cells) == N * N
    for i, j, c in cells:
        assert (c is None and math.isnan(C[i, j])) or c == C[i, j]


def test_alignment_and_retrieval_views_match_numpy(lake):
    con = lake["con"]
    got = {
        (m, lg, layer): s
        for m, lg, layer, s in con.execute("SELECT method, lang, layer, score FROM alignment").fetchall()
    }
    ret = {
        (m, lg, layer, d): a
        for m, lg, layer, d, a in con.execute(
            "SELECT method, lang, layer, direction, accuracy FROM retrieval"
        ).fetchall()
    }
    assert len(got) == 2 * 2 * LAYERS
    for (method, lang, layer), score in got.items():
        C = _matrices_from_lake(con, method, lang, layer)
        assert score == pytest.approx(mutual_nn_score(C), abs=1e-12), (method, lang, layer)
        for d in ("pivot_to_lang", "lang_to_pivot"):
            assert ret[(method, lang, layer, d)] == pytest.approx(retrieval_accuracy(C, d), abs=1e-12)
    # the planted tie is a miss; the planted NaN rival is ignored, not a win
    tie = con.execute(
        "SELECT diagonal, row_rival, row_hit FROM mutual_nn"
        " WHERE method='nas' AND lang='deu' AND layer=0 AND sentence=3"
    ).fetchone()
    assert tie[0] == tie[1] and tie[2] is False
    C = _matrices_from_lake(con, "nas", "deu", 1)
    rival = con.execute(
        "SELECT row_rival FROM mutual_nn WHERE method='nas' AND lang='deu' AND layer=1 AND sentence=2"
    ).fetchone()[0]
    assert math.isnan(C[2, 0]) and rival == np.nanmax(np.delete(C[2], 2))
    n_sent = con.execute("SELECT DISTINCT n_sentences FROM alignment").fetchall()
    assert n_sent == [(N,)]


def test_alignment_from_stored_states_agrees_with_device_matrices(lake):
    con = lake["con"]
    q = """SELECT a.method, a.lang, a.layer, a.score, s.score FROM alignment a
           JOIN alignment_from_states s USING (model, checkpoint, method, pivot_lang, lang, layer)"""
    rows = con.execute(q).fetchall()
    assert len(rows) == 2 * 2 * LAYERS
    for method, lang, layer, device_score, sql_score in rows:
        if (method, lang, layer) in (("nas", "deu", 0), ("nas", "deu", 1)):
            continue  # planted edits exist only in the stored matrices
        assert sql_score == pytest.approx(device_score, abs=1e-12), (method, lang, layer)


def test_any_pivot_from_states_matches_reference(lake):
    con = lake["con"]
    states = lake["states"]
    rows = con.execute(
        """SELECT method, layer, score FROM alignment_from_states WHERE pivot_lang = 'fra' AND lang = 'deu'"""
    ).fetchall()
    assert len(rows) == 2 * LAYERS
    for method, layer, score in rows:
        P = states[method]["fra"][:, layer].astype(np.float32).astype(float)
        X = states[method]["deu"][:, layer].astype(np.float32).astype(float)
        assert score == pytest.approx(mutual_nn_score(cosine_matrix(P, X)), abs=1e-12)


def test_alignment_summary_is_layer_mean_max_and_first_best_layer(lake):
    con = lake["con"]
    per_layer = con.execute("SELECT method, lang, layer, score FROM alignment").fetchall()
    summary = con.execute(
        "SELECT method, lang, score_mean, score_max, best_layer, n_layers FROM alignment_summary"
    ).fetchall()
    assert len(summary) == 4
    for method, lang, mean, mx, best, n_layers in summary:
        scores = [s for m, lg, layer, s in sorted(per_layer, key=lambda r: r[2]) if (m, lg) == (method, lang)]
        assert mean == pytest.approx(np.mean(scores))
        assert mx == max(scores)
        assert best == scores.index(max(scores))
        assert n_layers == LAYERS


def test_neuron_views_match_numpy(lake):
    con = lake["con"]
    counts = lake["counts"]
    prob = {lang: counts[lang][0] / counts[lang][2] for lang in LANGS}
    rows = con.execute(
        "SELECT lang, layer, neuron, activation_prob, mean_abs_activation FROM neuron_activation"
    ).fetchall()
    assert len(rows) == len(LANGS) * LAYERS * DIM
    for lang, layer, neuron, p, mean_abs in rows:
        assert p == pytest.approx(prob[lang][layer, neuron])
        assert mean_abs == pytest.approx(counts[lang][1][layer, neuron] / counts[lang][2])
    ent = {
        (layer, n): (e, top)
        for layer, n, e, top in con.execute("SELECT layer, neuron, entropy, top_lang FROM neuron_entropy").fetchall()
    }
    for layer in range(LAYERS):
        for n in range(DIM):
            ps = np.array([prob[lang][layer, n] for lang in LANGS])
            share = ps / ps.sum() if ps.sum() > 0 else ps
            expected = -sum(s * math.log(s) for s in share if s > 0)
            assert ent[(layer, n)][0] == pytest.approx(expected, abs=1e-12)
    assert ent[(0, 0)] == (pytest.approx(0.0), "eng")  # fires for English only
    # LAPE selection (identify.py: kthvalue order statistics over every probability, round(top_rate x all
    # neurons) lowest entropies among neurons with a language above the filter bar), recomputed in numpy
    all_p = np.sort(np.concatenate([prob[lang].ravel() for lang in LANGS]))
    bar = all_p[round(len(all_p) * 0.95) - 1]
    n_top = round(LAYERS * DIM * 0.2)
    key = {
        (layer, n): (e if max(prob[lang][layer, n] for lang in LANGS) > bar else math.inf, layer, n)
        for (layer, n), (e, _) in ent.items()
    }
    chosen = sorted(key, key=key.get)[:n_top]
    expected = {(layer, n, lang) for layer, n in chosen for lang in LANGS if prob[lang][layer, n] > bar}
    got = {tuple(r) for r in con.execute("SELECT layer, neuron, lang FROM lape_neurons(top_rate := 0.2)").fetchall()}
    assert got == expected and (0, 0, "eng") in got
    # the default view keeps round(0.01 x 15) = 0 neurons of this tiny model, as identify.py would
    assert con.execute("SELECT count(*) FROM language_specific_neurons").fetchone()[0] == 0


def test_correlation_view_matches_scipy(lake, tmp_path):
    import shutil

    from neuronxa_ray.cli import main

    root = tmp_path / "lake"
    shutil.copytree(lake["root"], root)
    csv = tmp_path / "bench.csv"
    values = {"deu": 40.0, "fra": 61.5}
    codes = {"deu": "de", "fra": "fr-FR"}  # benchmark codes meet the lake's on canonical codes
    rows = "".join(f"xnli,{codes[k]},{v}\n" for k, v in values.items()) + "xnli,swh,10\n"  # swh: no score
    csv.write_text("benchmark,lang,value\n" + rows)
    assert main(["import-benchmarks", str(csv), "--lake", str(root)]) == 0
    con = connect(root)
    summary = con.execute("SELECT method, lang, score_mean FROM alignment_summary").fetchall()
    got = con.execute(
        "SELECT method, n_languages, pearson, spearman, pearson_p, spearman_p, pearson_ci_low, spearman_ci_high"
        " FROM correlation WHERE benchmark = 'xnli'"
    ).fetchall()
    assert {r[0] for r in got} == {"nas", "hidden"}
    for method, n, pearson, spearman, pearson_p, spearman_p, low, high in got:
        scores = {lg: sc for m, lg, sc in summary if m == method}
        x = [scores[lg] for lg in values]
        y = list(values.values())
        assert n == 2
        assert pearson == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12, nan_ok=True)
        assert spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12, nan_ok=True)
        # two languages: scipy's pearsonr gives p = 1, spearmanr no p (NULL here); the interval is (-1, 1)
        assert pearson_p == (None if math.isnan(pearson) else 1.0) and spearman_p is None
        assert (low, high) == ((None, None) if math.isnan(pearson) else (-1.0, 1.0))


def test_spearman_sql_matches_scipy_with_ties(tmp_path):
    """The rank formula of the correlation view on a larger synthetic set, against scipy."""
    import duckdb

    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=30).astype(float)
    y = x + rng.normal(size=30)
    y[:5] = y[5]  # ties on both sides
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (SELECT unnest(?) AS x, unnest(?) AS y)", [x.tolist(), y.tolist()])
    ranks = con.execute(
        """SELECT x, y,
             (rank() OVER (ORDER BY x) + count(*) OVER () - rank() OVER (ORDER BY x DESC) + 1) / 2.0,
             (rank() OVER (ORDER BY y) + count(*) OVER () - rank() OVER (ORDER BY y DESC) + 1) / 2.0 FROM t"""
    ).fetchall()
    xs = [r[0] for r in ranks]
    assert [r[2] for r in ranks] == average_ranks(xs)
    rho = con.execute(
        """SELECT corr(rx, ry) FROM (SELECT
             (rank() OVER (ORDER BY x) + count(*) OVER () - rank() OVER (ORDER BY x DESC) + 1) / 2.0 AS rx,
             (rank() OVER (ORDER BY y) + count(*) OVER () - rank() OVER (ORDER BY y DESC) + 1) / 2.0 AS ry FROM t)"""
    ).fetchone()[0]
    assert rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_runs_latest_and_training_curve(lake, tmp_path):
    import shutil

    root = tmp_path / "lake"
    shutil.copytree(lake["root"], root)
    lk = Lake(root)
    from neuronxa_ray.lake import SCHEMAS

    def run_row(ckpt, step, finished):
        row = {f.name: None for f in SCHEMAS["runs"]}
        row.update(
            run_id=f"r-{ckpt}-{finished}",
            model=MODEL,
            checkpoint=ckpt,
            step=step,
            pivot_lang="eng",
            languages=LANGS,
            n_languages=3,
            n_languages_computed=3,
            n_sentences=N,
            hook_site="act",
            started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
            finished_at=dt.datetime(2026, 1, 1, 0, finished, tzinfo=dt.timezone.utc),
            wall_s=1.0,
            code_version="t",
            schema_version="2",
            config_json="{}",
        )
        return row

    for ckpt, step, minute in (("main", 100, 1), ("main", 200, 5)):
        row = run_row(ckpt, step, minute)
        lk.write("runs", {k: [v] for k, v in row.items()}, root / "runs" / f"{row['run_id']}.parquet")
    con = connect(root)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    assert con.execute("SELECT step FROM latest_runs").fetchall() == [(200,)]
    curve = con.execute("SELECT method, lang, step, score_mean FROM training_curve ORDER BY method, lang").fetchall()
    summary = dict(
        ((m, lg), s) for m, lg, s in con.execute("SELECT method, lang, score_mean FROM alignment_summary").fetchall()
    )
    for method, lang, step, score in curve:
        assert step == 200
        if lang == "*":
            assert score == pytest.approx(np.mean([v for (m, _), v in summary.items() if m == method]))
        else:
            assert score == pytest.approx(summary[(method, lang)])


def test_views_bind_on_an_empty_lake(tmp_path):
    con = connect(tmp_path)
    for view in (
        "alignment",
        "retrieval",
        "alignment_summary",
        "runs",
        "correlation",
        "training_curve",
        "neuron_entropy",
        "language_specific_neurons",
        "alignment_from_states",
        "correlation_over_training",
        "benchmark_pairs",
        "neuron_overlap",
        "lape_thresholds()",
        "languages",
        "alignment_interval",
        "language_mean_interval_at()",
        "training_change",
        "paired_difference('m', 'a', 'm', 'b')",
    ):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == 0


# The views that read `matches` against the cell-based path over the same matrices, on matrices built to break it.
def _exact_rows(con, query):
    return con.execute(query + " ORDER BY ALL").fetchall()


@pytest.fixture(scope="module")
def tricky_lake(tmp_path_factory):
    """Random matrices on a coarse grid (exact ties everywhere), NaN diagonals, NaN rivals, NaN rows and columns;
    both `similarity` (cells) and `matches` (the device's per-sentence results) written for two languages."""
    from test_scoring import tricky_matrices

    root = tmp_path_factory.mktemp("tricky")
    lk = Lake(root)
    rng = np.random.default_rng(5)
    info = {"checkpoint_fingerprint": "fp"}
    for pivot, lang in (("eng", "fra"), ("eng", "deu"), ("fra", "deu")):
        mats = {"nas": tricky_matrices(rng), "hidden": tricky_matrices(rng, layers=3)}
        sim = lk.write(
            "similarity",
            similarity_table(MODEL, CKPT, pivot, lang, mats),
            lk.language_file("similarity", MODEL, CKPT, lang, pivot),
        )
        stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}
        found = lk.write(
            "matches",
            matches_table(MODEL, CKPT, pivot, lang, stats),
            lk.language_file("matches", MODEL, CKPT, lang, pivot),
        )
        lk.mark_done(MODEL, CKPT, pivot, lang, f"fp-{pivot}-{lang}", info, [sim, found])
        lk.mark_done(MODEL, CKPT, pivot, pivot, f"fp-{pivot}", info, [])  # each pivot's own marker
    return connect(root)


def test_matches_views_equal_the_cell_based_computation(tricky_lake):
    con = tricky_lake
    cols = "model, checkpoint, pivot_lang, lang, method, layer, sentence, diagonal, row_rival, column_rival"
    cols += ", row_hit, column_hit"
    new = _exact_rows(con, f"SELECT {cols} FROM mutual_nn")
    old = _exact_rows(con, f"SELECT {cols} FROM mutual_nn_from_cells")
    assert len(new) == 3 * (4 + 3) * 9
    assert new == old  # bit for bit: values, NULLs and every hit decision
    hits = [r[10] for r in new]
    assert 0 < sum(hits) < len(hits)  # the fixture has hits and misses
    assert _exact_rows(con, "SELECT * FROM alignment") == _exact_rows(con, "SELECT * FROM alignment_from_cells")
    assert _exact_rows(con, "SELECT * FROM retrieval") == _exact_rows(
        con, "SELECT * FROM retrieval_of('mutual_nn_from_cells')"
    )
    assert _exact_rows(con, "SELECT * FROM alignment_summary") == _exact_rows(
        con, "SELECT * FROM summary_of('alignment_from_cells')"
    )
    assert max(r[0] for r in con.execute("SELECT score FROM alignment").fetchall()) > 0


def test_retrieval_ranks_p_at_1_is_retrieval_accuracy(tricky_lake):
    rows = tricky_lake.execute(
        """SELECT r.accuracy, k.p_at_1, k.p_at_5, k.p_at_10, k.mrr FROM retrieval AS r
           JOIN retrieval_ranks AS k USING (model, checkpoint, method, pivot_lang, lang, layer, direction)"""
    ).fetchall()
    assert len(rows) == 3 * (4 + 3) * 2
    for acc, p1, p5, p10, mrr in rows:
        assert acc == p1 and p1 <= p5 <= p10 <= 1.0 and p1 <= mrr <= p10 + 1e-12


GRAINS = {
    "mutual_nn": "model, checkpoint, pivot_lang, lang, method, layer, sentence",
    "mutual_nn_from_cells": "model, checkpoint, pivot_lang, lang, method, layer, sentence",
    "mutual_nn_from_states": "model, checkpoint, pivot_lang, lang, method, layer, sentence",
    "alignment": "model, checkpoint, method, pivot_lang, lang, layer",
    "alignment_from_cells": "model, checkpoint, method, pivot_lang, lang, layer",
    "alignment_from_states": "model, checkpoint, method, pivot_lang, lang, layer",
    "retrieval": "model, checkpoint, method, pivot_lang, lang, layer, direction",
    "retrieval_ranks": "model, checkpoint, method, pivot_lang, lang, layer, direction",
    "alignment_summary": "model, checkpoint, method, pivot_lang, lang",
    "alignment_matrix": "model, checkpoint, method, pivot_lang, lang",
    "correlation": "model, checkpoint, method, pivot_lang, benchmark",
    "sentence_hits": "model, checkpoint, pivot_lang, lang, method, sentence",
    "alignment_interval": "model, checkpoint, method, pivot_lang, lang",
}


@pytest.mark.parametrize("fixture", ["lake", "tricky_lake"])
def test_every_view_is_unique_on_its_declared_grain(fixture, request):
    got = request.getfixturevalue(fixture)
    con = got["con"] if isinstance(got, dict) else got
    con.execute(
        "CREATE OR REPLACE TEMP VIEW benchmarks AS SELECT * FROM (VALUES ('xnli', 'fra', 1.0, NULL, NULL),"
        " ('xnli', 'deu', 2.0, NULL, NULL), ('xnli', 'deu', 3.0, 'other-model', NULL))"
        " AS t(benchmark, lang, value, model, checkpoint)"
    )
    from neuronxa_ray.query import sql_texts

    sql_text = "".join(text for _, text in sql_texts())
    for view, key in GRAINS.items():
        assert f"Grain: ({key})" in " ".join(sql_text.split()), view  # the header declares this grain
        total, distinct = con.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM {view}").fetchone()
        assert total == distinct, view
        if view not in ("mutual_nn_from_states", "alignment_from_states") or fixture == "lake":
            assert total > 0, view


def test_the_schema_file_says_what_describe_says(tmp_path):
    """sql/SCHEMA.md (every view's columns and types, every table macro's parameters) is what DuckDB describes on a
    connection to an empty lake: regenerate it with `python -m neuronxa_ray.query.schema > sql/SCHEMA.md`."""
    from neuronxa_ray.query.schema import describe

    want = describe(connect(str(tmp_path / "lake")))
    assert (Path(__file__).resolve().parent.parent / "sql" / "SCHEMA.md").read_text(encoding="utf-8") == want
