"""Correlation significance, language codes, LAPE and neuron overlap against scipy, numpy and a port of the
authors' identify.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from lake_helpers import mark_complete

from neuronxa_ray.corpus.languages import canonical_lang, is_language_code, language_name
from neuronxa_ray.lake import Lake, neuron_counts_table
from neuronxa_ray.query import connect, stats

# ---------------------------------------------------------------------------------------------- correlations


def _random_sets(seed: int = 11, count: int = 300) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of samples: n = 3 .. 40, continuous, tied (few distinct values), strongly (anti)correlated."""
    rng = np.random.default_rng(seed)
    sets = []
    for k in range(count):
        n = 3 if k % 5 == 0 else int(rng.integers(3, 41))
        kind = k % 4
        x = rng.normal(size=n)
        if kind == 1:  # ties on both sides
            x = rng.integers(0, 3, size=n).astype(float)
            y = x + rng.integers(0, 2, size=n)
        elif kind == 2:  # nearly linear, either sign
            y = (1 if k % 8 < 4 else -1) * 3 * x + rng.normal(scale=0.05, size=n)
        else:
            y = 0.3 * x + rng.normal(size=n)
        if np.all(x == x[0]) or np.all(y == y[0]):
            y = y + np.arange(n)  # scipy is undefined on constant input; that case is tested on its own
            x = x + np.arange(n)[::-1] * 0.5
        sets.append((x, y))
    return sets


def _correlate(con, sets):
    rows = [(g, float(x), float(y)) for g, (xs, ys) in enumerate(sets) for x, y in zip(xs, ys)]
    con.execute("CREATE OR REPLACE TABLE pts (gid INTEGER, x DOUBLE, y DOUBLE)")
    con.executemany("INSERT INTO pts VALUES (?, ?, ?)", rows)
    con.execute("CREATE OR REPLACE VIEW pts_g AS SELECT {'gid': gid} AS g, x, y FROM pts")
    out = con.execute("SELECT g.gid, * EXCLUDE (g) FROM correlate('pts_g') ORDER BY 1").fetchall()
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own interval at n = 3, r = 1
def test_correlate_equals_scipy_statistics_pvalues_and_intervals(tmp_path):
    con = connect(tmp_path)
    sets = _random_sets()
    got = _correlate(con, sets)
    assert [r[0] for r in got] == list(range(len(sets)))
    n_tied = 0
    for (gid, n, pearson, spearman, pp, sp, plo, phi, slo, shi), (x, y) in zip(got, sets):
        assert n == len(x)
        ref_p = scipy.stats.pearsonr(x, y)
        ref_s = scipy.stats.spearmanr(x, y)
        ci_p = ref_p.confidence_interval()
        # Spearman's interval: the Fisher-z interval of the Pearson correlation of the (average) ranks
        ci_s = scipy.stats.pearsonr(scipy.stats.rankdata(x), scipy.stats.rankdata(y)).confidence_interval()
        assert pearson == pytest.approx(ref_p.statistic, abs=1e-12), gid
        assert spearman == pytest.approx(ref_s.statistic, abs=1e-12), gid
        # p-values equal scipy's to 1e-9 relative or 1e-15 absolute: near |r| = 1 a one-ulp difference in the
        # statistic (DuckDB's corr vs numpy) moves a p of 1e-24 by a factor, so below 1e-15 the check is exact
        # on the formula instead: scipy's public distributions at the view's own statistic
        assert pp == pytest.approx(ref_p.pvalue, rel=1e-9, abs=1e-15), gid
        assert sp == pytest.approx(ref_s.pvalue, rel=1e-9, abs=1e-15), gid
        ab = n / 2 - 1
        assert pp == pytest.approx(2 * scipy.stats.beta(ab, ab, loc=-1, scale=2).sf(abs(pearson)), rel=1e-9)
        t = spearman * math.sqrt((n - 2) / ((1 + spearman) * (1 - spearman))) if abs(spearman) < 1 else math.inf
        assert sp == pytest.approx(2 * scipy.stats.t(n - 2).sf(abs(t)), rel=1e-9, abs=1e-300), gid
        assert (plo, phi) == (pytest.approx(ci_p.low, abs=1e-12), pytest.approx(ci_p.high, abs=1e-12)), gid
        assert (slo, shi) == (pytest.approx(ci_s.low, abs=1e-12), pytest.approx(ci_s.high, abs=1e-12)), gid
        n_tied += len(set(x)) < len(x)
    assert n_tied > 50  # the sets do exercise ties
    assert sum(len(x) == 3 for x, _ in sets) >= 60


def test_functions_equal_scipy_at_their_edges():
    # n = 3: the interval is (-1, 1); a perfect correlation has p = 0 (pearsonr) and (spearmanr)
    x, y = [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]
    r = scipy.stats.pearsonr(x, y)
    assert stats.pearson_pvalue(r.statistic, 3) == pytest.approx(r.pvalue, rel=1e-12)
    assert (stats.fisher_ci_low(r.statistic, 3, 0.95), stats.fisher_ci_high(r.statistic, 3, 0.95)) == (-1.0, 1.0)
    s = scipy.stats.spearmanr(x, y)
    assert s.statistic == 1.0 and stats.spearman_pvalue(1.0, 3) == s.pvalue == 0.0
    # y = 2x: scipy's r is 1 - 3e-16 and its p 1.7e-61; the exact r = 1 gives p = 0
    assert stats.pearson_pvalue(1.0, 10) == 0.0
    assert scipy.stats.pearsonr(np.arange(10.0), 2 * np.arange(10.0)).pvalue == pytest.approx(0.0, abs=1e-15)
    # n = 2: scipy's pearsonr gives p = 1
    assert stats.pearson_pvalue(-1.0, 2) == scipy.stats.pearsonr([1.0, 2.0], [2.0, 1.0]).pvalue == 1.0
    # other confidence levels follow scipy
    x = np.random.default_rng(0).normal(size=12)
    y = x + np.random.default_rng(1).normal(size=12)
    r = scipy.stats.pearsonr(x, y)
    ci = r.confidence_interval(confidence_level=0.9)
    assert stats.fisher_ci_low(r.statistic, 12, 0.9) == pytest.approx(ci.low, abs=1e-14)
    assert stats.fisher_ci_high(r.statistic, 12, 0.9) == pytest.approx(ci.high, abs=1e-14)
    # undefined inputs: NULL, not a number
    assert stats.pearson_pvalue(float("nan"), 10) is None and stats.spearman_pvalue(None, 10) is None
    assert stats.fisher_ci_low(float("nan"), 10, 0.95) is None and stats.pearson_pvalue(0.5, 1) is None
    with pytest.raises(ValueError, match="confidence level"):
        stats.fisher_ci_low(0.5, 10, 95)


def test_constant_input_gives_null_significance(tmp_path):
    con = connect(tmp_path)
    row = _correlate(con, [(np.array([1.0, 1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0, 5.0]))])[0]
    assert math.isnan(row[2]) and row[4] is None and row[6] is None and row[7] is None


# ------------------------------------------------------------------------------------------- language codes


@pytest.mark.parametrize(
    "codes",
    [
        ["fra", "fr", "fra_Latn", "fr-FR", "fre", "FR"],
        ["zho_Hans", "cmn", "zh", "cmn_Hans", "zh-CN", "zho"],
        ["zho_Hant", "zh-TW", "cmn_Hant", "zh-Hant"],
        ["arb", "ar", "arb_Arab", "ara"],
        ["swh", "sw", "swh_Latn", "swa"],
        ["eng", "en", "eng_Latn", "en-US"],
        ["deu", "ger", "de", "deu_Latn"],
        ["pes", "fa", "pes_Arab"],
        ["nob", "nb", "nob_Latn"],
    ],
)
def test_codes_of_one_language_share_a_canonical_code(codes):
    assert len({canonical_lang(c) for c in codes}) == 1, {c: canonical_lang(c) for c in codes}


def test_distinct_languages_and_scripts_stay_apart():
    groups = [["zho_Hans", "cmn"], ["zho_Hant"], ["srp_Cyrl", "sr"], ["srp_Latn"], ["yue"], ["por"], ["spa"]]
    canon = [canonical_lang(g[0]) for g in groups]
    assert len(set(canon)) == len(groups), canon
    assert canonical_lang("srp_Cyrl") == canonical_lang("sr")
    # unknown codes stay themselves (lower-cased) and still meet each other
    assert canonical_lang("xx_Test") == "xx_test" and canonical_lang("*") == "*" and canonical_lang(None) is None
    assert language_name("arb") == "Standard Arabic" and language_name("fra_Latn").startswith("French")
    assert is_language_code("fr") and is_language_code("fra_Latn") and not is_language_code("law", False)
    assert not is_language_code("easy") and not is_language_code("fr_latn")


def test_sql_functions_on_the_connection(tmp_path):
    con = connect(tmp_path)
    got = con.execute(
        "SELECT canonical_lang(c), language_name(c) FROM (VALUES ('cmn'), ('xnli_zh'), (NULL)) t(c)"
    ).fetchall()
    assert got == [("zh", "Mandarin Chinese"), ("xnli_zh", "xnli_zh"), (None, None)]


# ----------------------------------------------------------------------------------------------------- LAPE


def identify_port(over_zero, n, top_rate, filter_rate, activation_bar_ratio):
    """RUCAIBox/Language-Specific-Neurons identify.py, `activation()`, line by line (float64 instead of the
    float32 that int / int gives in torch, so sums match DuckDB's doubles). over_zero: [layers, inter, langs]
    counts; n: [langs] token counts. Returns final_indice (per language index, per layer, neuron indices) and
    what the test needs to resolve ties at the top-k boundary: entropy, the top-k index and the probabilities."""
    activation_probs = over_zero / n  # layer x inter x lang_num
    normed_activation_probs = activation_probs / activation_probs.sum(dim=-1, keepdim=True)
    normed_activation_probs[torch.isnan(normed_activation_probs)] = 0
    log_probs = torch.where(normed_activation_probs > 0, normed_activation_probs.log(), 0)
    entropy = -torch.sum(normed_activation_probs * log_probs, dim=-1)
    largest = False

    if torch.isnan(entropy).sum():
        raise ValueError

    flattened_probs = activation_probs.flatten()
    top_prob_value = flattened_probs.kthvalue(round(len(flattened_probs) * filter_rate)).values.item()
    # dismiss the neuron if no language has an activation value over top 90%
    top_position = (activation_probs > top_prob_value).sum(dim=-1)
    entropy[top_position == 0] = -torch.inf if largest else torch.inf

    flattened_entropy = entropy.flatten()
    top_entropy_value = round(len(flattened_entropy) * top_rate)
    _, index = flattened_entropy.topk(top_entropy_value, largest=largest)
    row_index = index // entropy.size(1)
    col_index = index % entropy.size(1)
    selected_probs = activation_probs[row_index, col_index]  # n x lang

    selected_probs = selected_probs.transpose(0, 1)
    activation_bar = flattened_probs.kthvalue(round(len(flattened_probs) * activation_bar_ratio)).values.item()
    lang, indice = torch.where(selected_probs > activation_bar)

    merged_index = torch.stack((row_index, col_index), dim=-1)
    final_indice = []
    for _, index in enumerate(indice.split(torch.bincount(lang).tolist())):
        lang_index = [tuple(row.tolist()) for row in merged_index[index]]
        lang_index.sort()
        layer_index = [[] for _ in range(over_zero.size(0))]
        for l, h in lang_index:  # noqa: E741 (the original's names)
            layer_index[l].append(h)
        for l, h in enumerate(layer_index):  # noqa: E741
            layer_index[l] = torch.tensor(h).long()
        final_indice.append(layer_index)
    extra = {
        "entropy": flattened_entropy,
        "index": row_index * entropy.size(1) + col_index,  # the top-k picks (flat layer x neuron index)
        "probs": activation_probs,
        "filter_bar": top_prob_value,
        "activation_bar": activation_bar,
        "n_top": top_entropy_value,
    }
    return final_indice, extra


def _expected_lape(over_zero, n, langs, top_rate, filter_rate, bar_ratio):
    """The port's selection as a set of (layer, neuron, lang). topk's order among equal entropies is unspecified:
    where equal entropies straddle the cut, the port must agree on everything else, and the tie is resolved in
    (layer, neuron) order as the SQL documents."""
    final, extra = identify_port(over_zero, n, top_rate, filter_rate, bar_ratio)
    d_ff = over_zero.size(1)
    port = {
        (layer, int(h), langs[li])
        for li, per_layer in enumerate(final)
        for layer, hs in enumerate(per_layer)
        for h in hs
    }
    entropy, picked = extra["entropy"], extra["index"].tolist()
    if not picked:
        return port, extra, False
    cut = max(entropy[i].item() for i in picked)
    below = sorted(i for i in range(len(entropy)) if entropy[i].item() < cut)
    tied = sorted(i for i in range(len(entropy)) if entropy[i].item() == cut)
    assert set(below) <= set(picked) and len(picked) - len(below) <= len(tied)
    chosen = below + tied[: len(picked) - len(below)]
    straddles = len(tied) > len(picked) - len(below)
    probs, bar = extra["probs"], extra["activation_bar"]
    expected = {
        (i // d_ff, i % d_ff, langs[li])
        for i in chosen
        for li in range(len(langs))
        if probs[i // d_ff, i % d_ff, li] > bar
    }
    if not straddles:
        assert port == expected  # without a tie at the cut, the port's own output is the expectation
    return expected, extra, straddles


def _write_counts(root, model, ckpt, langs, over_zero, n):
    lk = Lake(root)
    for li, lang in enumerate(langs):
        active = over_zero[:, :, li].numpy().astype(float)
        abs_sum = np.ones_like(active)
        lk.write(
            "neuron_counts",
            neuron_counts_table(model, ckpt, lang, active, abs_sum, int(n[li])),
            lk.language_file("neuron_counts", model, ckpt, lang),
        )
    mark_complete(lk)


def _planted_counts(seed, layers, d_ff, langs):
    """Counts with planted language-specific neurons, identical neurons (exact entropy ties), neurons that never
    fire (entropy 0 by identify.py's NaN -> 0, but dismissed by the filter), and repeated probabilities."""
    rng = np.random.default_rng(seed)
    n = torch.tensor(rng.integers(200, 400, size=len(langs)), dtype=torch.float64)
    over_zero = torch.zeros(layers, d_ff, len(langs), dtype=torch.float64)
    for li in range(len(langs)):
        over_zero[:, :, li] = torch.from_numpy(rng.integers(0, int(n[li]) // 2, size=(layers, d_ff)).astype(float))
    for k in range(min(layers * d_ff // 6, 12)):  # language-specific: fires in one language (sometimes two)
        layer, neuron = k % layers, (7 * k + 3) % d_ff
        over_zero[layer, neuron] = torch.arange(1, len(langs) + 1, dtype=torch.float64) + 2 * k  # a little elsewhere
        over_zero[layer, neuron, k % len(langs)] = n[k % len(langs)] - k
        if k % 3 == 0:
            over_zero[layer, neuron, (k + 1) % len(langs)] = n[(k + 1) % len(langs)] * 0.99 // 1
    # exact ties: copies of planted neurons at other positions
    over_zero[layers - 1, d_ff - 1] = over_zero[0, 3]
    over_zero[layers - 1, d_ff - 2] = over_zero[0, 3]
    over_zero[0, d_ff - 1] = over_zero[1, 10]
    over_zero[1, d_ff - 1] = 0  # never fires
    return over_zero, n


LAPE_CASES = [  # (filter_rate, top_rate, activation_bar_ratio)
    (0.95, 0.01, 0.95),  # LAPE's defaults
    (0.95, 0.05, 0.95),  # identify.py as published for llama-70b
    (0.9, 0.1, 0.95),
    (0.95, 0.05, 0.9),  # a bar below the filter: chosen neurons gain languages
    (0.99, 0.2, 0.95),  # fewer candidates than n_top: +inf neurons fill the rest, as topk does
    (0.5, 0.02, 0.8),
]


@pytest.fixture(scope="module")
def lape_lake(tmp_path_factory):
    """Two models: 4 languages x 3 layers x 40 neurons, and 3 x 2 x 25 (|P| = 150: 150 * 0.95 = 142.5 rounds to
    142, 50 neurons * 0.05 = 2.5 rounds to 2: Python's round-half-even)."""
    root = tmp_path_factory.mktemp("lape")
    data = {}
    for model, (seed, layers, d_ff, langs) in {
        "m/a": (5, 3, 40, ["cmn", "deu", "eng", "fra"]),
        "m/b": (9, 2, 25, ["arb", "eng", "swh"]),
    }.items():
        over_zero, n = _planted_counts(seed, layers, d_ff, langs)
        _write_counts(root, model, "main", langs, over_zero, n)
        data[model] = (over_zero, n, langs)
    return connect(root), data


@pytest.mark.parametrize("rates", LAPE_CASES)
def test_lape_equals_identify_py(lape_lake, rates):
    con, data = lape_lake
    filter_rate, top_rate, bar_ratio = rates
    args = f"filter_rate := {filter_rate}, top_rate := {top_rate}, activation_bar_ratio := {bar_ratio}"
    thresholds = {
        r[0]: r[1:]
        for r in con.execute(
            f"SELECT model, filter_k, filter_bar, activation_k, activation_bar, n_top FROM lape_thresholds({args})"
        ).fetchall()
    }
    rows = con.execute(
        f"SELECT model, layer, neuron, lang, entropy, activation_prob FROM lape_neurons({args})"
    ).fetchall()
    for model, (over_zero, n, langs) in data.items():
        expected, extra, _ = _expected_lape(over_zero, n, langs, top_rate, filter_rate, bar_ratio)
        n_probs = over_zero.numel()
        fk, fbar, ak, abar, n_top = thresholds[model]
        assert fk == round(n_probs * filter_rate) and ak == round(n_probs * bar_ratio)
        assert fbar == extra["filter_bar"] and abar == extra["activation_bar"]
        assert n_top == extra["n_top"] == round(over_zero.shape[0] * over_zero.shape[1] * top_rate)
        got = {(layer, neuron, lang) for m, layer, neuron, lang, _, _ in rows if m == model}
        assert got == expected, (model, rates)
        probs = extra["probs"]
        for m, layer, neuron, lang, _entropy, prob in rows:
            if m == model:
                assert prob == probs[layer, neuron, langs.index(lang)].item()


def test_lape_default_view_and_rounding(lape_lake):
    con, _data = lape_lake
    view = set(con.execute("SELECT * FROM language_specific_neurons").fetchall())
    assert view == set(con.execute("SELECT * FROM lape_neurons()").fetchall())
    assert view == set(
        con.execute(
            "SELECT * FROM lape_neurons(filter_rate := 0.95, top_rate := 0.01, activation_bar_ratio := 0.95)"
        ).fetchall()
    )
    b = con.execute("SELECT filter_k, n_top FROM lape_thresholds(top_rate := 0.05) WHERE model = 'm/b'").fetchone()
    assert b == (142, 2)  # round-half-even, as Python's round
    # the defaults keep round(0.01 x 120) = 1 neuron of model a: its lowest entropy neuron
    a = con.execute(
        "SELECT DISTINCT layer, neuron, entropy FROM language_specific_neurons WHERE model = 'm/a'"
    ).fetchall()
    ent = con.execute(
        "SELECT min(entropy) FROM neuron_entropy e JOIN lape_thresholds() t USING (model, checkpoint)"
        " WHERE model = 'm/a' AND e.max_prob > t.filter_bar"
    ).fetchone()[0]
    assert len(a) == 1 and a[0][2] == ent


def test_lape_ties_at_the_cut_follow_layer_neuron_order(tmp_path):
    """Six identical single-language neurons and a cut through them: which ones topk takes is unspecified, the
    SQL takes the lowest (layer, neuron); everything else equals the port."""
    langs = ["eng", "fra"]
    n = torch.tensor([1000.0, 1000.0], dtype=torch.float64)
    over_zero = torch.full((2, 50, 2), 300.0, dtype=torch.float64)
    over_zero[:, :, 1] = torch.arange(1, 101, dtype=torch.float64).reshape(2, 50)  # distinct entropies elsewhere
    for layer, neuron in [(0, 2), (0, 9), (1, 1), (1, 5), (1, 7), (1, 19)]:
        over_zero[layer, neuron] = torch.tensor([0.0, 970.0])
    _write_counts(tmp_path, "m", "main", langs, over_zero, n)
    con = connect(tmp_path)
    expected, extra, straddles = _expected_lape(over_zero, n, langs, 0.04, 0.95, 0.95)
    assert straddles and extra["n_top"] == 4 and extra["filter_bar"] == 0.3  # 4 of the 6 tied neurons are taken
    got = {tuple(r) for r in con.execute("SELECT layer, neuron, lang FROM lape_neurons(top_rate := 0.04)").fetchall()}
    assert got == expected == {(0, 2, "fra"), (0, 9, "fra"), (1, 1, "fra"), (1, 5, "fra")}


# ------------------------------------------------------------------------------------------- neuron overlap


def test_neuron_overlap_equals_numpy(tmp_path):
    rng = np.random.default_rng(4)
    langs, layers, d_ff = ["deu", "eng", "fra"], 3, 30
    data = {}
    lk = Lake(tmp_path)
    for ckpt in ("step1", "step2"):
        for lang in langs:
            n_tokens = 2 * int(rng.integers(25, 40))
            active = rng.integers(0, n_tokens + 1, size=(layers, d_ff)).astype(float)
            active[2] = 0 if lang != "eng" else active[2]  # layer 2: only English has active neurons
            active[0, :4] = n_tokens / 2  # exactly at the 0.5 threshold: not active (strictly above)
            data[(ckpt, lang)] = active / n_tokens
            lk.write(
                "neuron_counts",
                neuron_counts_table("m", ckpt, lang, active, np.ones_like(active), n_tokens),
                lk.language_file("neuron_counts", "m", ckpt, lang),
            )
    mark_complete(lk)
    con = connect(tmp_path)
    for threshold, query in (
        (0.5, "SELECT * FROM neuron_overlap"),
        (0.3, "SELECT * FROM neuron_overlap_at(threshold := 0.3)"),
    ):
        rows = con.execute(query).fetchall()
        assert len(rows) == 2 * layers * len(langs) * (len(langs) - 1)
        for _model, ckpt, layer, a, b, jaccard, n_a, n_b, n_both in rows:
            pa_, pb = data[(ckpt, a)][layer] > threshold, data[(ckpt, b)][layer] > threshold
            assert (n_a, n_b, n_both) == (pa_.sum(), pb.sum(), (pa_ & pb).sum())
            union = (pa_ | pb).sum()
            if union:
                assert jaccard == pytest.approx((pa_ & pb).sum() / union, abs=1e-15)
            else:
                assert jaccard is None
        assert any(r[5] is None for r in rows if r[2] == 2) is False or threshold  # layer 2: eng vs others is 0
        layer2 = [r for r in rows if r[2] == 2 and "eng" not in (r[3], r[4])]
        assert all(r[5] is None and r[8] == 0 for r in layer2)
