"""The report's sections: for each, the queries over the lake's views and the figures, tables and notes drawn from
them. A section reads rows through `model`, draws through `charts` and knows nothing of the page around it."""

from __future__ import annotations

import html
from collections.abc import Sequence

from neuronxa_ray.methods import label
from neuronxa_ray.report import charts as draw
from neuronxa_ray.report.charts import Charts
from neuronxa_ray.report.model import (
    MAX_DETAIL_CHECKPOINTS,
    Scope,
    Section,
    column_names,
    method_labels,
    records,
    where_in,
    with_labels,
)
from neuronxa_ray.report.tables import fmt, pretty, table

DIRECTION_LABELS = {"pivot_to_lang": "pivot → language", "lang_to_pivot": "language → pivot"}
SIGNIFICANCE_FDR = 0.05  # a step is marked when its change is significant at this false discovery rate
RUN_COLUMNS = (
    "model", "checkpoint", "step", "pivot_lang", "n_languages", "n_languages_computed", "n_sentences", "n_layers",
    "d_ff", "hook_site", "device", "dtype", "num_actors", "started_at", "wall_s", "startup_s", "extract_s",
    "write_s", "n_tokens", "sentences_per_s", "code_version", "torch_version", "transformers_version",
)  # fmt: skip


def _title(model: str, ckpt: str, pivot: str | None = None) -> str:
    return f"{model} @ {ckpt}" + (f", pivot {pivot}" if pivot else "")


# ---------------------------------------------------------------------------------- layers, heatmaps, matrix


def layers_sections(con, charts: Charts, scope: Scope) -> list[Section]:
    """Score per layer and the language × layer heatmaps, per (model, checkpoint) drawn in detail and pivot."""
    sec = Section(
        "layers",
        "Alignment per layer",
        "Share of parallel sentence pairs that are mutual nearest neighbours, per layer. NASCA / NAVCA use FFN "
        "neuron states (binary / absolute activations) of FFN block i at layer i; MEXA uses hidden states, where "
        "layer 0 is the embeddings and layer i + 1 the output of block i (one layer more, so each method has its "
        "own panel and axis). Thick "
        "line: mean over languages; grey: each language (hover); pick a language to highlight it.",
    )
    heat = Section(
        "heatmaps",
        "Language × layer heatmaps",
        "One heatmap per method; languages sorted by their layer-mean score for that method (best on top). "
        "Type a regular expression to filter languages.",
    )
    for model, ckpt in scope.detail:
        pivots = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT pivot_lang FROM alignment WHERE model = ? AND checkpoint = ? ORDER BY 1", [model, ckpt]
            ).fetchall()
        ]
        for pivot in pivots:
            _draw_layers(con, charts, (model, ckpt, pivot), sec, heat)
    skipped = [c for m, cs in scope.checkpoints.items() for c in cs if (m, c) not in scope.detail]
    if skipped:
        sec.notes.append(
            f"Models with more than {MAX_DETAIL_CHECKPOINTS} checkpoints are drawn per layer for their latest "
            f"checkpoint only; {len(skipped)} others appear in the training curves (name them with --checkpoint)."
        )
    if not sec.figures:
        sec.notes.append("No per-layer scores: the lake has no per-sentence matches (run a job first).")
        heat.notes.append("No scores to draw.")
    return [sec, heat]


def _draw_layers(con, charts: Charts, where: tuple[str, str, str], sec: Section, heat: Section) -> None:
    """One (model, checkpoint, pivot): its lines into `sec`, its heatmap into `heat`, both on one dataset."""
    rows = records(
        con,
        """SELECT method, lang, layer, score FROM alignment
           WHERE model = ? AND checkpoint = ? AND pivot_lang = ? ORDER BY method, lang, layer""",
        list(where),
    )
    if not rows:
        return
    methods = method_labels(rows)
    with_labels(rows)
    langs = sorted({r["lang"] for r in rows})
    n_layers = max(r["layer"] for r in rows) + 1
    key = f"{len(sec.figures)}"
    sec.figures.append(
        charts.figure(
            draw.per_layer(charts, rows, langs, methods, key),
            f"Score per layer: {_title(*where)}",
            len(rows),
            f"{len(langs)} languages, methods {', '.join(methods)}.",
        )
    )
    heat.figures.append(
        charts.figure(
            draw.heatmap(charts, rows, methods, key, len(langs), n_layers),
            f"Language × layer: {_title(*where)}",
            len(rows),
        )
    )


def matrix_section(con, charts: Charts, scope: Scope, views: set[str]) -> Section | None:
    view = "alignment_matrix" if "alignment_matrix" in views else "alignment_summary"
    sec = Section(
        "matrix",
        "Language × language",
        f"Layer-mean score for every pivot and language pair (view `{view}`).",
    )
    cols = column_names(con, view)
    value = "score_mean" if "score_mean" in cols else next((c for c in cols if c.startswith("score")), None)
    if not {"model", "checkpoint", "method", "pivot_lang", "lang"} <= set(cols) or value is None:
        sec.notes.append(f"View `{view}` lacks the columns model, checkpoint, method, pivot_lang, lang, score.")
        return sec
    for model, ckpt in scope.detail:
        rows = records(
            con,
            f"""SELECT method, pivot_lang, lang, avg({value}) AS score_mean FROM {view}
                WHERE model = ? AND checkpoint = ? GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        if len({r["pivot_lang"] for r in rows}) < 2:
            continue
        methods = method_labels(rows)
        sec.figures.append(
            charts.figure(
                draw.matrix(charts, with_labels(rows), methods), f"Pivot × language: {_title(model, ckpt)}", len(rows)
            )
        )
    return sec if sec.figures else None


# ---------------------------------------------------------------------------------------------------- training


def training_section(con, charts: Charts, scope: Scope, views: set[str]) -> Section:
    sec = Section(
        "training",
        "Training curves",
        "Layer-mean score against training step, one panel per method: thick line = mean over languages "
        "(lang '*' in view `training_curve`), grey = each language. Checkpoints without a step are ordered by name. "
        "Band: 95% bootstrap interval of the mean over languages (1,000 resamples of the sentences, each with all "
        "its layers and languages, seed 0). ◆: the change from the previous checkpoint is significant at a 5% false "
        "discovery rate (view `training_change`: paired bootstrap p-values over the same sentences, "
        "Benjamini–Hochberg over every method and step of the figure).",
    )
    cols = set(column_names(con, "training_curve"))
    bands = ", ci_low, ci_high" if {"ci_low", "ci_high"} <= cols else ""
    for model, ckpts in scope.checkpoints.items():
        if len(ckpts) < 2:
            continue
        where, params = where_in("checkpoint", ckpts)
        rows = records(
            con,
            f"""SELECT checkpoint, step, method, pivot_lang, lang, score_mean{bands} FROM training_curve
                WHERE model = ? AND {where} ORDER BY pivot_lang, method, lang, step NULLS LAST, checkpoint""",
            [model, *params],
        )
        changes = _step_changes(con, model, ckpts) if "training_change" in views else {}
        for r in rows:
            change = changes.get((r["checkpoint"], r["method"], r["pivot_lang"])) if r["lang"] == "*" else None
            r["change"], r["q_value"] = (change or (None, None))[:2]
            r["significant"] = change is not None and change[1] is not None and change[1] < SIGNIFICANCE_FDR
        for pivot in sorted({r["pivot_lang"] for r in rows}):
            part = [{k: v for k, v in r.items() if k != "pivot_lang"} for r in rows if r["pivot_lang"] == pivot]
            methods = method_labels(part)
            with_labels(part)
            langs = sorted({r["lang"] for r in part} - {"*"})
            by_step = all(scope.steps.get((model, c)) is not None for c in ckpts)
            n_marked = sum(r["significant"] for r in part)
            sec.figures.append(
                charts.figure(
                    draw.training(charts, part, methods, langs, by_step, ckpts, f"{len(sec.figures)}", bool(bands)),
                    f"Training curve: {model}, pivot {pivot}",
                    len(part),
                    f"{len(ckpts)} checkpoints, {len(langs)} languages; {n_marked} significant step change(s).",
                )
            )
    if not sec.figures:
        sec.notes.append("Training curves need a model with two or more checkpoints in the lake.")
    return sec


def _step_changes(con, model: str, ckpts: Sequence[str]) -> dict[tuple[str, str, str], tuple]:
    """(checkpoint, method, pivot_lang) -> (difference, q_value) from the previous checkpoint, mean over languages."""
    rows = con.execute(
        """SELECT checkpoint, method, pivot_lang, difference, q_value FROM training_change
           WHERE model = ? AND lang = '*'""",
        [model],
    ).fetchall()
    keep = set(ckpts)
    return {(c, m, p): (d, q) for c, m, p, d, q in rows if c in keep}


# --------------------------------------------------------------------------------- retrieval and correlation


def retrieval_section(con, charts: Charts, scope: Scope) -> Section:
    sec = Section(
        "retrieval",
        "Retrieval in both directions",
        "Retrieval accuracy: pivot → language (row criterion: the parallel sentence is the nearest among the "
        "language's sentences) and language → pivot (column criterion); NAS (NASCA) against hidden states (MEXA). "
        "Asymmetry = pivot → language − language → pivot, per language as a mean over layers.",
    )
    for model, ckpt in scope.detail:
        base = """FROM retrieval WHERE model = ? AND checkpoint = ? AND method IN ('nas', 'hidden')"""
        layer_rows = records(
            con,
            f"""SELECT pivot_lang, method, direction, layer, avg(accuracy) AS accuracy {base}
                GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        lang_rows = records(
            con,
            f"""SELECT pivot_lang, method, lang,
                       avg(accuracy) FILTER (WHERE direction = 'pivot_to_lang') AS pivot_to_lang,
                       avg(accuracy) FILTER (WHERE direction = 'lang_to_pivot') AS lang_to_pivot,
                       pivot_to_lang - lang_to_pivot AS asymmetry
                {base} GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        for pivot in sorted({r["pivot_lang"] for r in layer_rows}):
            lr = [r for r in layer_rows if r["pivot_lang"] == pivot]
            gr = [r for r in lang_rows if r["pivot_lang"] == pivot]
            _draw_retrieval(charts, sec, lr, gr, _title(model, ckpt, pivot))
    if not sec.figures:
        sec.notes.append("No retrieval rows for NAS or hidden states in the lake.")
    return sec


def _draw_retrieval(charts: Charts, sec: Section, lr: list[dict], gr: list[dict], title: str) -> None:
    """One pivot's retrieval: accuracy per layer (`lr`), the asymmetry per language (`gr`) and its table."""
    methods = method_labels(lr)
    with_labels(lr)
    with_labels(gr)
    for r in lr:
        r["direction"] = DIRECTION_LABELS.get(r["direction"], r["direction"])
    sec.figures.append(
        charts.figure(draw.retrieval_layers(charts, lr, methods), f"Retrieval per layer: {title}", len(lr))
    )
    sec.figures.append(
        charts.figure(
            draw.retrieval_scatter(charts, gr, methods),
            f"Retrieval asymmetry per language: {title}",
            len(gr),
            "Points below the diagonal: finding the language's sentence from the pivot is easier than the reverse.",
        )
    )
    sec.tables.append(_asymmetry_table(gr, title))


def _asymmetry_table(rows: list[dict], title: str) -> str:
    """Mean over languages of each direction and the mean |asymmetry|, per method."""
    out = {}
    for r in rows:
        if r["pivot_to_lang"] is None or r["lang_to_pivot"] is None:
            continue
        acc = out.setdefault(r["method"], [0, 0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += r["pivot_to_lang"]
        acc[2] += r["lang_to_pivot"]
        acc[3] += abs(r["asymmetry"])
    body = [[m, str(n), f"{a / n:.3f}", f"{b / n:.3f}", f"{c / n:.3f}"] for m, (n, a, b, c) in out.items() if n]
    head = ["method", "languages", "pivot → language", "language → pivot", "mean |asymmetry|"]
    return table(head, body, f"Retrieval, mean over languages and layers: {title}")


def correlation_section(con, charts: Charts, scope: Scope) -> Section | None:
    n_bench = con.execute("SELECT count(*) FROM benchmarks").fetchone()[0]
    if not n_bench:
        return None
    sec = Section(
        "correlation",
        "Alignment against downstream benchmarks",
        "Each point is a language: layer-mean alignment score against an imported benchmark result "
        "(`neuronxa-ray import-benchmarks`). Pearson r and Spearman ρ across languages from view `correlation`.",
    )
    cols = column_names(con, "correlation")
    p_cols = [c for c in ("pearson_p", "spearman_p") if c in cols]
    select = ", ".join(["pearson", "spearman", *p_cols])
    for model, ckpt in scope.detail:
        stats = {
            (r["method"], r["pivot_lang"], r["benchmark"]): r
            for r in records(
                con,
                f"""SELECT method, pivot_lang, benchmark, n_languages, {select} FROM correlation
                    WHERE model = ? AND checkpoint = ?""",
                [model, ckpt],
            )
        }
        _draw_correlations(con, charts, sec, (model, ckpt), stats, p_cols)
        if stats:
            head = ["method", "pivot", "benchmark", "languages", "Pearson r", "Spearman ρ", *p_cols]
            body = [
                [label(m), p, b, str(r["n_languages"]), *(fmt(r[c]) for c in ("pearson", "spearman", *p_cols))]
                for (m, p, b), r in sorted(stats.items())
            ]
            sec.tables.append(table(head, body, f"Correlations: {_title(model, ckpt)}"))
    if not p_cols:
        sec.notes.append("The `correlation` view of this lake has no p-value columns.")
    if not sec.figures:
        sec.notes.append("Benchmarks are imported but none shares a language with the scored ones.")
    return sec


def _draw_correlations(
    con, charts: Charts, sec: Section, where: tuple[str, str], stats: dict[tuple, dict], p_cols: list[str]
) -> None:
    """One figure per (pivot, benchmark) of a (model, checkpoint); each method's panel titled with its statistics."""
    pairs = records(  # the view's points: languages meet on canonical codes (fr = fra), one value each
        con,
        """SELECT method, pivot_lang, benchmark, lang, score, value FROM benchmark_pairs
           WHERE model = ? AND checkpoint = ? ORDER BY ALL""",
        list(where),
    )
    for pivot, bench in sorted({(r["pivot_lang"], r["benchmark"]) for r in pairs}):
        part = [r for r in pairs if r["pivot_lang"] == pivot and r["benchmark"] == bench]
        methods = method_labels(part)
        labels = {}
        for m in {r["method"] for r in part}:
            st = stats.get((m, pivot, bench), {})
            labels[m] = f"{label(m)}: {_stat_text(st, p_cols)}"
        for r in part:
            r["label"] = labels[r["method"]]
        part.sort(key=lambda r: methods.index(label(r["method"])))
        with_labels(part)
        sec.figures.append(
            charts.figure(
                draw.correlation(charts, part, bench, methods),
                f"{bench} against alignment: {_title(*where, pivot)}",
                len(part),
            )
        )


def _stat_text(st: dict, p_cols: list[str]) -> str:
    if not st:
        return "no correlation row"
    r = f"r={fmt(st.get('pearson'), 2)}"
    rho = f"ρ={fmt(st.get('spearman'), 2)}"
    if "pearson_p" in p_cols:
        r += f" (p={fmt(st.get('pearson_p'), 3)})"
    if "spearman_p" in p_cols:
        rho += f" (p={fmt(st.get('spearman_p'), 3)})"
    return f"{r}, {rho}, n={st.get('n_languages')}"


# ---------------------------------------------------------------------------------------------- neurons, runs


def neurons_section(con, charts: Charts, scope: Scope, views: set[str]) -> Section:
    sec = Section(
        "neurons",
        "Language-specific neurons",
        "FFN neurons that fire for few languages (LAPE: low entropy of activation probabilities across languages, "
        "view `language_specific_neurons`), counted per layer and language.",
    )
    for model, ckpt in scope.detail:
        rows = records(
            con,
            """SELECT lang, layer, CAST(count(*) AS INTEGER) AS n_neurons FROM language_specific_neurons
               WHERE model = ? AND checkpoint = ? GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        if rows:
            n_langs = len({r["lang"] for r in rows})
            n_layers = con.execute(
                "SELECT max(layer) + 1 FROM neuron_counts WHERE model = ? AND checkpoint = ?", [model, ckpt]
            ).fetchone()[0]
            sec.figures.append(
                charts.figure(
                    draw.neurons(charts, rows, n_langs, int(n_layers)),
                    f"Language-specific neurons: {_title(model, ckpt)}",
                    len(rows),
                    f"{sum(r['n_neurons'] for r in rows)} (neuron, language) assignments.",
                )
            )
    overlap = sorted(v for v in views if "overlap" in v)
    for view in overlap:
        _draw_overlap(con, charts, scope, sec, view)
    if not overlap:
        sec.notes.append("No neuron-overlap view in this lake's SQL.")
    if not any(f.title.startswith("Language-specific") for f in sec.figures):
        sec.notes.append("No language-specific neurons: the lake has no neuron counts (or too few languages).")
    return sec


def interventions_section(con, charts: Charts, scope: Scope) -> Section | None:
    """LAPE's perplexity experiment per base model: the switched-off x evaluated language matrix at the latest
    checkpoint, and its diagonal over training steps."""
    sec = Section(
        "interventions",
        "Neurons switched off",
        "Perplexity with a set of neurons switched off, over perplexity with none off, per evaluated language (view "
        "`intervention_matrix`): the language-specific neurons (LAPE) of the language on the left, or a random "
        "control set of the same size per layer. Above 1: harder to predict. A diagonal well above its random "
        "control means the neurons are specific to that language, not merely many.",
    )
    for model in scope.models:
        rows = records(
            con,
            """SELECT checkpoint, step, kind, intervention, switched_off, lang, perplexity_ratio, perplexity,
                      perplexity_none, n_neurons
               FROM intervention_matrix WHERE model = ? ORDER BY step NULLS LAST, checkpoint""",
            [model],
        )
        if not rows:
            continue
        latest = rows[-1]["checkpoint"]
        at = [r for r in rows if r["checkpoint"] == latest]
        sec.figures.append(
            charts.figure(
                draw.intervention_matrix(charts, at), f"Switched off × evaluated: {_title(model, latest)}", len(at)
            )
        )
        diagonal = records(
            con,
            """SELECT checkpoint, step, kind, exp(avg(ln(perplexity_ratio))) AS perplexity_ratio
               FROM intervention_matrix WHERE model = ? AND switched_off = lang AND step IS NOT NULL
               GROUP BY ALL ORDER BY step, kind""",
            [model],
        )
        if len({r["step"] for r in diagonal}) > 1:
            sec.figures.append(
                charts.figure(
                    draw.intervention_diagonal(charts, diagonal),
                    f"Own neurons off, over training (geometric mean over languages): {model}",
                    len(diagonal),
                )
            )
    return sec if sec.figures else None


def _draw_overlap(con, charts: Charts, scope: Scope, sec: Section, view: str) -> None:
    """A neuron-overlap view as a language × language heatmap per (model, checkpoint), when its columns allow."""
    cols = column_names(con, view)
    langs = [c for c in cols if "lang" in c]
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {view})").fetchall())
    numeric = [
        c
        for c in cols
        if c not in langs
        and c not in ("model", "checkpoint", "layer")
        and any(t in types[c] for t in ("DOUBLE", "FLOAT", "INT", "DECIMAL"))
    ]
    if len(langs) < 2 or not numeric or not {"model", "checkpoint"} <= set(cols):
        sec.notes.append(f"View `{view}` has no (language, language, value) columns to draw.")
        return
    a, b = langs[0], langs[1]
    value = "jaccard" if "jaccard" in numeric else numeric[0]
    for model, ckpt in scope.detail:
        rows = records(
            con,
            f"""SELECT "{a}", "{b}", avg("{value}") AS "{value}" FROM {view}
                WHERE model = ? AND checkpoint = ? GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        if rows:
            sec.figures.append(
                charts.figure(
                    draw.pair_heatmap(charts, rows, a, b, value),
                    f"Neuron overlap ({view}): {_title(model, ckpt)}",
                    len(rows),
                )
            )


def runs_section(con, charts: Charts, scope: Scope) -> Section:
    sec = Section("runs", "Runs", "Every run recorded in the lake (view `runs`; a rerun adds a row).")
    cols = column_names(con, "runs")
    shown = [c for c in RUN_COLUMNS if c in cols]
    where, params = where_in("model", scope.models) if scope.models else ("true", [])
    rows = records(
        con,
        f"""SELECT {", ".join(shown)}{", config_json" if "config_json" in cols else ""} FROM runs
            WHERE {where} ORDER BY model, step NULLS LAST, checkpoint, started_at""",
        params,
    )
    if not rows:
        sec.notes.append("No runs recorded (the `runs` table is written when a job finishes).")
        return sec
    body = [[fmt(r[c]) for c in shown] for r in rows]
    sec.tables.append(table(list(shown), body, "Runs: settings, code version, timings and throughput", wide=True))
    settings = [
        f"<details><summary>settings of {html.escape(r['model'])} @ {html.escape(r['checkpoint'])} "
        f"({html.escape(str(r.get('started_at')))})</summary><pre>{html.escape(pretty(r.get('config_json')))}</pre>"
        "</details>"
        for r in rows
    ]
    sec.tables.append("\n".join(settings))
    tp = [
        {
            "run": f"{r['model']} @ {r['checkpoint']} ({r['started_at']})",
            "sentences_per_s": r.get("sentences_per_s"),
            "wall_s": r.get("wall_s"),
            "device": r.get("device"),
        }
        for r in rows
        if r.get("sentences_per_s") is not None
    ]
    if tp:
        sec.figures.append(charts.figure(draw.throughput(charts, tp), "Throughput per run", len(tp)))
    return sec
