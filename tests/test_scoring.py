"""Per-sentence match results on the device, and every language pair from stored states, against numpy."""

import shutil

import numpy as np
import pytest
import torch
from reference import column_hits, cosine_matrix, mutual_nn_score, retrieval_accuracy, row_hits
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.compute.matching import match_stats
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution.pairs import compute_pairs
from neuronxa_ray.lake import Lake, states_table
from neuronxa_ray.query import connect


def ranks_reference(C) -> tuple[list, list]:
    """Pessimistic ranks in float64 loops: 1 + rivals >= the partner (NaN rivals ignored); None for a NaN diagonal."""
    n = len(C)
    rows, cols = [], []
    for i in range(n):
        d = C[i][i]
        if np.isnan(d):
            rows.append(None)
            cols.append(None)
            continue
        rows.append(1 + sum(1 for j in range(n) if j != i and C[i][j] >= d))
        cols.append(1 + sum(1 for j in range(n) if j != i and C[j][i] >= d))
    return rows, cols


def tricky_matrices(rng, layers=4, n=9) -> np.ndarray:
    """Values from a coarse grid (many exact ties), NaN diagonals, NaN rivals, a whole NaN row and column."""
    C = rng.integers(-4, 5, size=(layers, n, n)) / 4.0
    C[:, np.arange(n), np.arange(n)] += rng.integers(0, 2, size=(layers, n)) * 0.5  # some diagonals win
    C[0, 2, 2] = np.nan  # NaN diagonal
    C[1, 3, 5] = 9.0  # a rival that wins
    C[1, 4, 1] = np.nan  # NaN rivals
    C[1, 1, 4] = np.nan
    C[2, 6, :] = np.nan  # a zero pivot state: its whole row
    C[-1, :, 0] = np.nan  # a zero lang state: its whole column
    C[-1, 7, 7] = C[-1, 7, 8]  # an exact row tie
    return C


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_stats_equal_the_float64_reference(seed):
    C = tricky_matrices(np.random.default_rng(seed))
    st = match_stats(torch.from_numpy(C)).numpy()
    for layer, M in enumerate(C):
        assert st["row_hit"][layer].tolist() == row_hits(M)
        assert st["column_hit"][layer].tolist() == column_hits(M)
        rows, cols = ranks_reference(M)
        assert [None if r < 1 else r for r in st["row_rank"][layer].tolist()] == rows
        assert [None if r < 1 else r for r in st["column_rank"][layer].tolist()] == cols
        # rank 1 <=> hit: ties are misses and never rank 1
        assert ((st["row_rank"][layer] == 1) == st["row_hit"][layer]).all()
        np.testing.assert_array_equal(st["diagonal"][layer], np.diagonal(M))
        for i in range(len(M)):
            others = [M[i][j] for j in range(len(M)) if j != i and not np.isnan(M[i][j])]
            assert st["row_rival"][layer][i] == max(others) if others else np.isnan(st["row_rival"][layer][i])
            others = [M[j][i] for j in range(len(M)) if j != i and not np.isnan(M[j][i])]
            assert st["column_rival"][layer][i] == max(others) if others else np.isnan(st["column_rival"][layer][i])
    assert not st["row_hit"][0, 2] and st["row_rank"][0, 2] == -1  # NaN diagonal: no hit, no rank
    assert st["row_rank"][-1, 7] >= 2 and not st["row_hit"][-1, 7]  # the planted tie


def test_match_stats_rejects_non_square():
    with pytest.raises(NeuronxaError, match="layers, n, n"):
        match_stats(torch.zeros(2, 3, 4, dtype=torch.float64))


MODEL, CKPT, N = "syn", "main", 8
LANGS = ["deu", "eng", "fra", "ita"]


@pytest.fixture(scope="module")
def states_lake(tmp_path_factory):
    """Stored states only (no matches): 4 languages sharing a base, a zero state, two identical sentences."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("pairs")
    lake = Lake(root)
    base = {"nas": rng.random((N, 2, 6)), "hidden": rng.normal(size=(N, 3, 5))}
    states = {}
    for k, lang in enumerate(LANGS):
        per = {m: (b + rng.normal(scale=0.3 + 0.2 * k, size=b.shape)).astype(np.float32) for m, b in base.items()}
        if lang == "fra":
            per["nas"][2, 1] = 0.0  # a zero state: a NaN row or column in every pair with fra
        if lang == "ita":
            per["hidden"][4] = per["hidden"][5]  # identical sentences: ties
        states[lang] = per
        ids = [f"s{i}" for i in range(N)]
        written = lake.write(
            "sentence_states",
            states_table(MODEL, CKPT, lang, ids, [3] * N, per),
            lake.language_file("sentence_states", MODEL, CKPT, lang),
        )
        lake.mark_done(MODEL, CKPT, LANGS[0], lang, f"fp-{lang}", {"checkpoint_fingerprint": "fp"}, [written])
    return root, states


def test_compute_pairs_matches_the_reference_for_every_pair(states_lake, tmp_path):
    src, states = states_lake
    root = tmp_path / "lake"
    shutil.copytree(src, root)
    written = compute_pairs(Lake(root), MODEL, CKPT, LANGS, "all")
    n_rows = sum(a.shape[1] for a in states["eng"].values()) * N  # per pair: layers of every method x sentences
    assert written == len(LANGS) * (len(LANGS) - 1) * n_rows
    assert compute_pairs(Lake(root), MODEL, CKPT, LANGS, "all") == 0  # every pair exists: nothing recomputed
    assert Lake(root).check() == []  # every pair is named by a verified marker
    con = connect(root)
    got = {r[:4]: r[4] for r in con.execute("SELECT pivot_lang, lang, method, layer, score FROM alignment").fetchall()}
    ret = {
        r[:5]: r[5]
        for r in con.execute("SELECT pivot_lang, lang, method, layer, direction, accuracy FROM retrieval").fetchall()
    }
    ranks = {
        r[:5]: r[5:]
        for r in con.execute(
            "SELECT pivot_lang, lang, method, layer, direction, p_at_1, p_at_5, mrr FROM retrieval_ranks"
        ).fetchall()
    }
    assert len(got) == len(LANGS) * (len(LANGS) - 1) * 5
    for (p, lang, method, layer), score in got.items():
        C = cosine_matrix(states[p][method][:, layer].astype(float), states[lang][method][:, layer].astype(float))
        assert score == pytest.approx(mutual_nn_score(C), abs=1e-12), (p, lang, method, layer)
        rows, cols = ranks_reference(C)
        for d, rk in (("pivot_to_lang", rows), ("lang_to_pivot", cols)):
            assert ret[(p, lang, method, layer, d)] == pytest.approx(retrieval_accuracy(C, d), abs=1e-12)
            p1, p5, mrr = ranks[(p, lang, method, layer, d)]
            assert p1 == pytest.approx(retrieval_accuracy(C, d), abs=1e-12)
            assert p5 == pytest.approx(np.mean([r is not None and r <= 5 for r in rk]), abs=1e-12)
            assert mrr == pytest.approx(np.mean([1 / r if r else 0.0 for r in rk]), abs=1e-12)
    matrix = con.execute("SELECT count(*), count(DISTINCT (method, pivot_lang, lang)) FROM alignment_matrix").fetchone()
    assert matrix == (2 * 12, 2 * 12)


def test_compute_pairs_validates_pivots(states_lake):
    root, _ = states_lake
    with pytest.raises(NeuronxaError, match="not among the languages"):
        compute_pairs(Lake(root), MODEL, CKPT, LANGS, ["xyz"])
    with pytest.raises(NeuronxaError, match=r"\['swh'\] .* have no stored states"):
        compute_pairs(Lake(root), MODEL, CKPT, [*LANGS, "swh"], ["eng"])


def test_pivot_row_of_the_pair_matrix_equals_the_workers_scores_exactly(tmp_path):
    """The worker's single-pivot matches (computed during extraction) and the pair computation (from stored
    states) agree bit for bit: same float32 states, same float64 matmul. The other pivots' pairs join them in
    alignment_matrix, and go stale when a source language is recomputed with other settings."""
    from neuronxa_ray.compute.matching import matches_of
    from neuronxa_ray.model.spec import ModelSpec
    from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings

    save_tiny("llama", tmp_path / "model", seed=5)
    lake_dir = tmp_path / "lake"
    settings = WorkerSettings(lake=str(lake_dir), state_dtype="float32")  # bit-exact recomputation needs float32
    worker = LanguageWorker(ModelSpec(model=str(tmp_path / "model")), settings)
    ids = [str(i) for i in range(6)]

    def task(lang, fp="ckpt"):
        return LanguageTask("tiny", "main", "eng", lang, ids, TEXTS[lang], f"fp-{lang}", checkpoint_fingerprint=fp)

    _, pivot = worker.process(task("eng"))
    for lang in ("fra", "deu"):
        worker.process(task(lang), pivot)
    worker.flush()
    lake = Lake(lake_dir)
    before = connect(lake_dir).execute("SELECT * FROM mutual_nn WHERE pivot_lang = 'eng' ORDER BY ALL").fetchall()
    assert len(before) > 0 and not (lake_dir / "similarity").exists()  # store_similarity is off by default
    states = {lang: lake.read_states("tiny", "main", lang) for lang in ("eng", "fra", "deu")}
    for lang in ("fra", "deu"):  # the same computation from stored states, bit for bit
        stored = (
            connect(lake_dir)
            .execute(
                "SELECT method, layer, sentence, diagonal, row_rival, column_rival, row_hit, column_hit FROM matches"
                " WHERE lang = ? ORDER BY method, layer, sentence",
                [lang],
            )
            .fetchall()
        )
        again = []
        for method in sorted(states["eng"]):
            m = matches_of(torch.from_numpy(states["eng"][method]), torch.from_numpy(states[lang][method]))
            for layer in range(m["diagonal"].shape[0]):
                for i in range(m["diagonal"].shape[1]):
                    again.append(
                        tuple(
                            [method, layer, i]
                            + [m[k][layer, i].item() for k in ("diagonal", "row_rival", "column_rival")]
                            + [bool(m[k][layer, i]) for k in ("row_hit", "column_hit")]
                        )
                    )
        assert stored == again
    written = compute_pairs(lake, "tiny", "main", ["eng", "fra", "deu"], "all")
    assert written == 4 * len(before) // 2  # (fra, eng), (fra, deu), (deu, eng), (deu, fra); eng's pairs exist
    con = connect(lake_dir)
    assert con.execute("SELECT * FROM mutual_nn WHERE pivot_lang = 'eng' ORDER BY ALL").fetchall() == before
    pairs = con.execute("SELECT DISTINCT pivot_lang, lang FROM alignment_matrix ORDER BY ALL").fetchall()
    assert pairs == [("deu", "eng"), ("deu", "fra"), ("eng", "deu"), ("eng", "fra"), ("fra", "deu"), ("fra", "eng")]
    eng_row = con.execute(
        "SELECT method, lang, score_mean FROM alignment_matrix WHERE pivot_lang = 'eng' ORDER BY ALL"
    ).fetchall()
    single = con.execute(
        "SELECT method, lang, score_mean FROM alignment_summary WHERE pivot_lang = 'eng' ORDER BY ALL"
    ).fetchall()
    assert eng_row == single
    # deu recomputed with other settings: its pairs with fra no longer count, and compute_pairs redoes them
    worker.process(task("deu", fp="other"), pivot)
    worker.process(task("eng", fp="other"))
    worker.flush()
    assert "stale" in {problem.kind for problem in Lake(lake_dir).check()}
    pairs = connect(lake_dir).execute("SELECT DISTINCT pivot_lang, lang FROM alignment_matrix ORDER BY ALL").fetchall()
    assert ("fra", "deu") not in pairs and ("deu", "fra") not in pairs and ("eng", "deu") in pairs
    # fra's text edited and fra recomputed (same settings): its pairs are stale until compute_pairs redoes them
    worker.process(task("eng", fp="other"))
    worker.process(task("fra", fp="other"), pivot)
    worker.process(task("deu", fp="other"), pivot)
    worker.flush()
    compute_pairs(lake_dir, "tiny", "main", ["eng", "fra", "deu"], "all")
    before_edit = connect(lake_dir).execute("SELECT count(*) FROM alignment_matrix").fetchone()[0]
    worker.process(
        LanguageTask("tiny", "main", "eng", "fra", ids, TEXTS["fra"], "fp-fra-2", checkpoint_fingerprint="other"), pivot
    )
    worker.flush()
    pairs = connect(lake_dir).execute("SELECT DISTINCT pivot_lang, lang FROM alignment_matrix ORDER BY ALL").fetchall()
    assert ("fra", "deu") not in pairs and ("deu", "fra") not in pairs
    assert compute_pairs(lake_dir, "tiny", "main", ["eng", "fra", "deu"], "all") > 0
    assert connect(lake_dir).execute("SELECT count(*) FROM alignment_matrix").fetchone()[0] == before_edit
