"""Bootstrap intervals over sentences (sql/25_intervals.sql, query/intervals.py) against an independent numpy
implementation (gathering the drawn sentences, not a matrix product), their coverage on simulated hits, paired
differences between checkpoints, and the training curve's intervals and significant steps."""

import datetime as dt

import numpy as np
import pytest

from neuronxa_ray.lake import SCHEMAS, Lake, matches_table
from neuronxa_ray.query import connect
from neuronxa_ray.query.intervals import paired_interval, sentence_interval

MODEL, PIVOT = "org/tiny", "eng"
LANGS = ("deu", "fra", "swh")
LAYERS = {"nas": 4, "hidden": 5}
N = 40
CHECKPOINTS = (("step-100", 100, 0.0), ("step-200", 200, 0.02), ("step-300", 300, 0.35))  # name, step, rate shift


def _hits(rng, layers: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """[layers, N] row and column hits: sentence difficulty shared by the layers (dependent layers), plus a shift."""
    base = rng.beta(2, 2, size=N)
    rate = np.clip(base[None, :] + shift + rng.normal(scale=0.1, size=(layers, N)), 0, 1)
    row = rng.random((layers, N)) < rate
    column = row & (rng.random((layers, N)) < 0.8) | (~row & (rng.random((layers, N)) < 0.1))
    return row, column


def _stats(row: np.ndarray, column: np.ndarray) -> dict[str, np.ndarray]:
    diagonal = np.where(row, 0.9, 0.5)
    return {
        "diagonal": diagonal,
        "row_rival": np.full(row.shape, 0.7),
        "column_rival": np.where(column, 0.7, 0.95),
        "row_hit": row,
        "column_hit": column,
        "row_rank": np.where(row, 1, 2),
        "column_rank": np.where(column, 1, 3),
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Three checkpoints (steps 100, 200, 300) x 3 languages x 2 methods x 40 sentences; the last step jumps."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("intervals")
    lk = Lake(root)
    hits = {}  # (checkpoint, method, lang) -> (row, column)
    for ckpt, step, shift in CHECKPOINTS:
        for lang in LANGS:
            stats = {}
            for method, layers in LAYERS.items():
                hits[ckpt, method, lang] = _hits(rng, layers, shift)
                stats[method] = _stats(*hits[ckpt, method, lang])
            written = lk.write(
                "matches",
                matches_table(MODEL, ckpt, PIVOT, lang, stats),
                lk.language_file("matches", MODEL, ckpt, lang, PIVOT),
            )
            lk.mark_done(MODEL, ckpt, PIVOT, lang, f"fp-{ckpt}-{lang}", {"checkpoint_fingerprint": ckpt}, [written])
        lk.mark_done(MODEL, ckpt, PIVOT, PIVOT, f"fp-{ckpt}", {"checkpoint_fingerprint": ckpt}, [])
        row = {f.name: None for f in SCHEMAS["runs"]}
        row.update(
            run_id=f"r-{ckpt}",
            model=MODEL,
            checkpoint=ckpt,
            step=step,
            pivot_lang=PIVOT,
            languages=list(LANGS),
            n_languages=len(LANGS),
            n_languages_computed=len(LANGS),
            n_sentences=N,
            hook_site="act",
            started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
            finished_at=dt.datetime(2026, 1, 1, 0, 1, tzinfo=dt.timezone.utc),
            wall_s=1.0,
            code_version="t",
            schema_version="2",
            config_json="{}",
        )
        lk.write("runs", {k: [v] for k, v in row.items()}, root / "runs" / f"{row['run_id']}.parquet")
    return {"root": root, "con": connect(root), "hits": hits}


# --- the independent implementation: per-sentence hit counts, the drawn positions gathered, numpy's quantile


def _per_sentence(row, column, measure):
    hit = {"alignment": row & column, "pivot_to_lang": row, "lang_to_pivot": column}[measure]
    return hit.sum(axis=0)  # [N] hits over the layers


def _reference(h, denominator, level, resamples, seed):
    n = len(h)
    draw = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    scores = h[draw].sum(axis=1) / (n * denominator)
    low, high = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return h.sum() / (n * denominator), low, high


def _reference_paired(ha, hb, da, db, level, resamples, seed):
    n = len(ha)
    draw = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    d = hb[draw].sum(axis=1) / (n * db) - ha[draw].sum(axis=1) / (n * da)
    low, high = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (resamples + 1))
    return hb.sum() / (n * db) - ha.sum() / (n * da), low, high, p


def test_intervals_equal_an_independent_implementation(lake):
    con, hits = lake["con"], lake["hits"]
    rows = con.execute(
        """SELECT checkpoint, method, lang, score_mean, score_ci_low, score_ci_high, pivot_to_lang_mean,
                  pivot_to_lang_ci_low, pivot_to_lang_ci_high, lang_to_pivot_mean, lang_to_pivot_ci_low,
                  lang_to_pivot_ci_high, n_layers, n_sentences, level, resamples, seed
           FROM alignment_interval_at(level := 0.9, resamples := 500, seed := 7)"""
    ).fetchall()
    assert len(rows) == len(CHECKPOINTS) * len(LANGS) * len(LAYERS)
    for ckpt, method, lang, *values, n_layers, n, level, resamples, seed in rows:
        assert (n_layers, n, level, resamples, seed) == (LAYERS[method], N, 0.9, 500, 7)
        for k, measure in enumerate(("alignment", "pivot_to_lang", "lang_to_pivot")):
            h = _per_sentence(*hits[ckpt, method, lang], measure)
            estimate, low, high = _reference(h, n_layers, 0.9, 500, 7)
            assert values[3 * k] == pytest.approx(estimate, abs=1e-15)
            assert (values[3 * k + 1], values[3 * k + 2]) == (low, high)  # identical, not close
            assert low <= estimate <= high


def test_point_estimates_are_the_views_layer_means(lake):
    con = lake["con"]
    rows = con.execute(
        """SELECT s.score_mean, i.score_mean, m.pivot_to_lang_mean, i.pivot_to_lang_mean, m.lang_to_pivot_mean,
                  i.lang_to_pivot_mean
           FROM alignment_summary AS s
           JOIN alignment_interval AS i USING (model, checkpoint, method, pivot_lang, lang)
           JOIN alignment_matrix AS m USING (model, checkpoint, method, pivot_lang, lang)"""
    ).fetchall()
    assert len(rows) == len(CHECKPOINTS) * len(LANGS) * len(LAYERS)
    for a, b, c, d, e, f in rows:
        assert (a, c, e) == pytest.approx((b, d, f), abs=1e-12)


def test_the_language_mean_resamples_sentences_jointly(lake):
    con, hits = lake["con"], lake["hits"]
    rows = con.execute(
        "SELECT checkpoint, method, lang, score_mean, score_ci_low, score_ci_high, n_languages, n_sentences "
        "FROM language_mean_interval_at()"
    ).fetchall()
    assert len(rows) == len(CHECKPOINTS) * len(LAYERS)
    for ckpt, method, lang, estimate, low, high, n_languages, n in rows:
        assert (lang, n_languages, n) == ("*", len(LANGS), N)
        h = sum(_per_sentence(*hits[ckpt, method, g], "alignment") for g in LANGS)
        ref = _reference(h, LAYERS[method] * len(LANGS), 0.95, 1000, 0)
        assert estimate == pytest.approx(ref[0], abs=1e-15) and (low, high) == ref[1:]
        per_lang = con.execute(
            "SELECT avg(score_mean) FROM alignment_summary WHERE checkpoint = ? AND method = ?", [ckpt, method]
        ).fetchone()[0]
        assert estimate == pytest.approx(per_lang, abs=1e-12)


def test_deterministic_for_a_seed(lake):
    query = "SELECT * FROM alignment_interval_at(seed := {}) ORDER BY ALL"
    first = connect(lake["root"]).execute(query.format(3)).fetchall()
    assert first == connect(lake["root"]).execute(query.format(3)).fetchall()
    other = lake["con"].execute(query.format(4)).fetchall()
    assert [r[5:7] for r in first] != [r[5:7] for r in other]  # another seed, other draws


def test_bad_settings_are_refused(lake):
    with pytest.raises(Exception, match=r"level 1\.5 must lie strictly between 0 and 1"):
        lake["con"].execute("SELECT * FROM alignment_interval_at(level := 1.5)").fetchall()
    with pytest.raises(Exception, match="measure recall: allowed alignment, pivot_to_lang, lang_to_pivot"):
        lake["con"].execute(
            f"SELECT * FROM paired_difference('{MODEL}', 'step-100', '{MODEL}', 'step-200', measure := 'recall')"
        ).fetchall()


def test_coverage_of_a_known_rate():
    """2,000 simulated runs of 100 sentences x 8 dependent layers (a sentence's difficulty is shared by its layers):
    the 95% intervals cover the true layer-mean rate in 95% of runs, within +-1.5 points (binomial s.e. 0.5)."""
    rng = np.random.default_rng(2026)
    trials, n, layers = 2000, 100, 8
    for rate, concentration in ((0.4, 2.0), (0.15, 2.0), (0.75, 6.0)):
        difficulty = rng.beta(rate * concentration, (1 - rate) * concentration, size=(trials, n))
        hits = rng.binomial(layers, difficulty)
        _, low, high = sentence_interval(hits, layers, 0.95, 1000, 0)
        coverage = ((low <= rate) & (rate <= high)).mean()
        assert 0.935 <= coverage <= 0.965, (rate, coverage)


def test_paired_null_rejects_at_its_level():
    """Two checkpoints drawn from the same sentence difficulties: p < 0.05 in about 5% of 2,000 pairs."""
    rng = np.random.default_rng(7)
    trials, n, layers = 2000, 100, 8
    difficulty = rng.beta(0.8, 1.2, size=(trials, n))
    a, b = rng.binomial(layers, difficulty), rng.binomial(layers, difficulty)
    *_, low, high, p = paired_interval(a, b, layers, layers, 0.95, 1000, 0)
    assert 0.035 <= (p < 0.05).mean() <= 0.065
    assert 0.935 <= ((low <= 0) & (high >= 0)).mean() <= 0.965


def test_paired_difference_equals_an_independent_implementation(lake):
    con, hits = lake["con"], lake["hits"]
    rows = con.execute(
        f"""SELECT method, lang, score_a, score_b, difference, ci_low, ci_high, p_value, n_languages, n_sentences,
                   measure, resamples
            FROM paired_difference('{MODEL}', 'step-100', '{MODEL}', 'step-300', measure := 'lang_to_pivot',
                                   resamples := 400, seed := 5)"""
    ).fetchall()
    assert len(rows) == len(LAYERS) * (len(LANGS) + 1)
    for method, lang, score_a, score_b, diff, low, high, p, n_languages, n, measure, resamples in rows:
        assert (measure, resamples, n) == ("lang_to_pivot", 400, N)
        langs = LANGS if lang == "*" else (lang,)
        assert n_languages == len(langs)
        ha = sum(_per_sentence(*hits["step-100", method, g], measure) for g in langs)
        hb = sum(_per_sentence(*hits["step-300", method, g], measure) for g in langs)
        ref = _reference_paired(ha, hb, LAYERS[method] * len(langs), LAYERS[method] * len(langs), 0.95, 400, 5)
        assert diff == pytest.approx(ref[0], abs=1e-15) and diff == pytest.approx(score_b - score_a, abs=1e-15)
        assert (low, high, p) == ref[1:]
        assert diff > 0.1 and low > 0 and p < 0.05  # the planted jump


def test_a_checkpoint_against_itself_differs_by_nothing(lake):
    rows = (
        lake["con"]
        .execute(
            f"SELECT difference, ci_low, ci_high, p_value FROM paired_difference('{MODEL}', 'step-200', '{MODEL}', "
            "'step-200')"
        )
        .fetchall()
    )
    assert rows and all(r == (0.0, 0.0, 0.0, 1.0) for r in rows)


def test_training_curve_has_intervals(lake):
    con = lake["con"]
    rows = con.execute("SELECT checkpoint, method, lang, score_mean, ci_low, ci_high FROM training_curve").fetchall()
    assert len(rows) == len(CHECKPOINTS) * len(LAYERS) * (len(LANGS) + 1)
    for *_, score, low, high in rows:
        assert low <= score + 1e-12 and score - 1e-12 <= high
    mean = {(r[0], r[1]): r[4:] for r in rows if r[2] == "*"}
    ref = con.execute("SELECT checkpoint, method, score_ci_low, score_ci_high FROM language_mean_interval_at()")
    assert mean == {(c, m): (lo, hi) for c, m, lo, hi in ref.fetchall()}


def test_training_change_marks_the_jump_after_benjamini_hochberg(lake):
    con = lake["con"]
    rows = con.execute(
        """SELECT checkpoint, previous_checkpoint, step, previous_step, method, lang, difference, ci_low, ci_high,
                  p_value, q_value, n_tests
           FROM training_change ORDER BY lang, step, method"""
    ).fetchall()
    assert len(rows) == 2 * len(LAYERS) * (len(LANGS) + 1)  # steps 200 and 300, each against the one before
    pairs = {(r[0], r[1], r[2], r[3]) for r in rows}
    assert pairs == {("step-200", "step-100", 200, 100), ("step-300", "step-200", 300, 200)}
    paired = {
        (m, lang): (d, lo, hi, p)
        for m, lang, d, lo, hi, p in con.execute(
            f"""SELECT method, lang, difference, ci_low, ci_high, p_value
                FROM paired_difference('{MODEL}', 'step-200', '{MODEL}', 'step-300')"""
        ).fetchall()
    }
    for ckpt, _, _, _, method, lang, d, lo, hi, p, _, n_tests in rows:
        assert n_tests == 2 * len(LAYERS)  # the family: one language (or '*'), every method and step
        if ckpt == "step-300":
            assert (d, lo, hi, p) == paired[method, lang]
    for lang in (*LANGS, "*"):
        family = [r for r in rows if r[5] == lang]
        p = np.array([r[9] for r in family])
        order = np.argsort(p, kind="stable")
        m = len(p)
        adjusted = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
        expected = np.empty(m)
        expected[order] = np.minimum(adjusted, 1.0)
        assert [r[10] for r in family] == pytest.approx(list(expected), abs=1e-15)
        jump = [r[10] for r in family if r[0] == "step-300"]
        assert all(q < 0.05 for q in jump), (lang, jump)  # the planted jump is significant after the correction


def test_intervals_of_integer_hits_equal_numpy_quantile_bit_for_bit():
    """Counting order statistics (integer sums) gives numpy.quantile's interval exactly, at any level, any number
    of resamples and sentences, ties and all."""
    from neuronxa_ray.query.intervals import integer_sums_interval, percentile_interval, resampled_sums

    rng = np.random.default_rng(1)
    for _ in range(300):
        rows, n = int(rng.integers(1, 50)), int(rng.integers(1, 15))
        resamples = int(rng.choice([1, 2, 3, 7, 40, 999, 1000]))
        level = float(rng.choice([0.1, 0.5, 0.6827, 0.9, 0.95, 0.99, 0.999]))
        hits = rng.integers(0, rng.integers(1, 40), size=(rows, n)).astype(float)
        scale = n * rng.integers(1, 30, size=rows).astype(float)
        sums = resampled_sums(hits, resamples, int(rng.integers(0, 5)))
        fast, numpy = integer_sums_interval(sums, scale, level), percentile_interval(sums / scale[:, None], level)
        assert np.array_equal(fast[0], numpy[0]) and np.array_equal(fast[1], numpy[1])
