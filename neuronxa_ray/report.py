"""`neuronxa-ray report`: one self-contained HTML file with the lake's figures (no CDN, no network).

Every number comes from the lake's SQL views (neuronxa_ray.query.connect.connect): `alignment`, `alignment_summary`,
`training_curve`, `retrieval`, `correlation`, `language_specific_neurons`, `runs`, and the optional
`alignment_matrix` / neuron-overlap views when they exist. Aggregation happens in DuckDB, so the page embeds only
small tables: per-layer detail for a few checkpoints, layer means for the rest.

`alignment` is computed once per report: a temporary table of the same name, restricted to the chosen models and
checkpoints, shadows the view in this connection only, so `alignment_summary`, `training_curve` and `correlation`
read it instead of recomputing the mutual nearest neighbours over every cosine matrix.

Plotting library: Vega-Altair with vl-convert-python (the `report` extra). One declarative spec per figure gives
both the interactive chart in the page (hover tooltips, zoom/pan, a language picker) with the Vega JavaScript
bundle inlined from vl-convert, and PNG/SVG files for papers without a browser or Node. Both are maintained by the
Vega project; plotly + matplotlib would need two plotting code paths for the same figure.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import hashlib
import html
import io
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronxa_ray.errors import NeuronxaError

log = logging.getLogger(__name__)

METHOD_ORDER = ("nas", "nav", "hidden", "hidden_last")
METHOD_LABELS = {"nas": "NASCA", "nav": "NAVCA", "hidden": "MEXA", "hidden_last": "MEXA-last"}
METHOD_COLORS = {"NASCA": "#1f77b4", "NAVCA": "#ff7f0e", "MEXA": "#2ca02c", "MEXA-last": "#9467bd"}
DIRECTION_LABELS = {"pivot_to_lang": "pivot → language", "lang_to_pivot": "language → pivot"}
MAX_DETAIL_CHECKPOINTS = 3  # a model with more checkpoints gets per-layer figures for its latest one only
SVG_MAX_ROWS = 3000  # larger figures draw on a canvas: faster in the browser, still printable


def _require_plotting():
    try:
        import altair as alt
        import vl_convert as vlc
    except ImportError as e:
        raise ImportError(
            f"the report needs the plotting extra: pip install 'neuronxa_ray[report]' (missing: {e.name})"
        ) from e
    return alt, vlc


def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes specs for (e.g. '6.4'), when vl-convert ships it; else its latest."""
    alt, vlc = _require_plotting()
    version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return version if version in vlc.get_vegalite_versions() else None


@dataclass
class Figure:
    """One chart: a Vega-Lite spec (a dict) plus how many data rows it embeds."""

    id: str
    title: str
    spec: dict[str, Any]
    n_rows: int
    caption: str = ""
    datasets: list[str] = field(default_factory=list)  # names of the shared CSV datasets the spec reads


@dataclass
class Section:
    """A titled part of the report: figures, small HTML tables, and notes on what is missing."""

    id: str
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # ready HTML
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    lake: str
    created: str
    sections: list[Section]
    missing: list[str]
    datasets: dict[str, str] = field(default_factory=dict)  # name -> CSV text, see _Charts.data

    @property
    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]


@dataclass(frozen=True)
class Scope:
    """The models and checkpoints a report covers; `detail` lists the (model, checkpoint) pairs drawn per layer."""

    models: list[str]
    checkpoints: dict[str, list[str]]  # model -> checkpoints in training order (step, then name)
    steps: dict[tuple[str, str], int | None]
    detail: list[tuple[str, str]]


# ---------------------------------------------------------------------------------------------------- queries


def _views(con) -> set[str]:
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return {r[0] for r in rows}


def _columns(con, relation: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def _records(con, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts; floats rounded to 4 decimals (the page embeds them as JSON), NaN as None."""
    rel = con.execute(query, list(params))
    cols = [d[0] for d in rel.description]
    out = []
    for row in rel.fetchall():
        rec = {}
        for c, v in zip(cols, row):
            if isinstance(v, decimal.Decimal):
                v = float(v)
            if isinstance(v, float):
                v = None if math.isnan(v) else round(v, 4)
            elif isinstance(v, (dt.datetime, dt.date)):
                v = v.isoformat(timespec="seconds") if isinstance(v, dt.datetime) else v.isoformat()
            rec[c] = v
        out.append(rec)
    return out


def _in(column: str, values: Sequence[str]) -> tuple[str, list[str]]:
    if not values:
        return "false", []
    return f"{column} IN ({', '.join('?' for _ in values)})", list(values)


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["method"] for r in rows}
    return [_label(m) for m in METHOD_ORDER if m in present] + sorted(
        _label(m) for m in present if m not in METHOD_ORDER
    )


def _with_labels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in rows:
        r["method"] = _label(r["method"])
    return rows


def resolve_scope(con, models: Sequence[str] | None, checkpoints: Sequence[str] | None) -> Scope:
    """Models and checkpoints with scores in the lake, filtered; ValueError names an unknown one."""
    rows = con.execute(
        """WITH scored AS (SELECT DISTINCT model, checkpoint FROM matches),
                steps AS (SELECT model, checkpoint, max(step) AS step FROM runs GROUP BY ALL)
           SELECT s.model, s.checkpoint, t.step FROM scored AS s LEFT JOIN steps AS t USING (model, checkpoint)
           ORDER BY s.model, t.step NULLS LAST, s.checkpoint"""
    ).fetchall()
    known_models = sorted({r[0] for r in rows})
    known_ckpts = sorted({r[1] for r in rows})
    for name, given, known in (("model", models, known_models), ("checkpoint", checkpoints, known_ckpts)):
        bad = [v for v in given or [] if v not in known]
        if bad and known:
            raise NeuronxaError(f"{name} {bad[0]!r} has no scores in the lake (known: {', '.join(known)})")
    rows = [r for r in rows if (not models or r[0] in models) and (not checkpoints or r[1] in checkpoints)]
    by_model: dict[str, list[str]] = {}
    steps = {}
    for model, ckpt, step in rows:
        by_model.setdefault(model, []).append(ckpt)
        steps[(model, ckpt)] = step
    # per-layer detail: every chosen checkpoint of a model with few (or named ones), else its latest only
    detail = [
        (m, c)
        for m, cs in by_model.items()
        for c in (cs if checkpoints or len(cs) <= MAX_DETAIL_CHECKPOINTS else cs[-1:])
    ]
    return Scope(sorted(by_model), by_model, steps, detail)


def _cache_alignment(con, scope: Scope) -> None:
    """Compute `alignment` once for the scope; the temporary table shadows the view for the dependent views."""
    pairs = [(m, c) for m, cs in scope.checkpoints.items() for c in cs]
    if not pairs:
        con.execute("CREATE OR REPLACE TEMP TABLE alignment AS SELECT * FROM main.alignment LIMIT 0")
        return
    keys = ", ".join("(?, ?)" for _ in pairs)
    params = [v for p in pairs for v in p]
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE alignment AS
            SELECT a.* FROM main.alignment AS a
            SEMI JOIN (VALUES {keys}) AS k(model, checkpoint) USING (model, checkpoint)""",
        params,
    )


# ---------------------------------------------------------------------------------------------------- figures


class _Charts:
    """Builds Altair charts; every figure gets a stable id and its row count."""

    def __init__(self, alt) -> None:
        self.alt = alt
        self.n = 0
        self.datasets: dict[str, str] = {}  # name -> CSV text, shared by every figure that uses it

    def data(self, rows: list[dict[str, Any]]):
        """Rows as a named CSV dataset (about a third of JSON's size); figures with equal rows share one copy."""
        cols = list(rows[0]) if rows else []
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        writer.writerows([["" if r[c] is None else r[c] for c in cols] for r in rows])
        text = buf.getvalue()
        name = "d" + hashlib.sha1(text.encode()).hexdigest()[:12]
        self.datasets[name] = text
        numeric = {
            c: "number"
            for c in cols
            if all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows if r[c] is not None)
            and any(r[c] is not None for r in rows)
        }
        return self.alt.NamedData(name=name, format=self.alt.CsvDataFormat(type="csv", parse=numeric))

    def figure(self, chart, title: str, n_rows: int, caption: str = "") -> Figure:
        self.n += 1
        spec = chart.to_dict()
        names = sorted(set(re.findall(r'"name": "(d[0-9a-f]{12})"', json.dumps(spec))))
        return Figure(f"fig{self.n:02d}", title, spec, n_rows, caption, names)

    def method_scale(self, methods: list[str]):
        return self.alt.Scale(domain=methods, range=[METHOD_COLORS.get(m, "#7f7f7f") for m in methods])

    def lang_param(self, langs: list[str], name: str):
        alt = self.alt
        return alt.param(
            name=name,
            value="(mean)",
            bind=alt.binding_select(options=["(mean)", *langs], name="highlight language: "),
        )

    def per_layer(self, rows: list[dict], langs: list[str], methods: list[str], key: str) -> Any:
        """Score against layer: mean over languages per method (thick), every language thin, one highlighted."""
        alt = self.alt
        pick = self.lang_param(langs, f"lang_{key}")
        base = alt.Chart().encode(
            x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("score:Q", title="alignment score", scale=alt.Scale(domain=[0, 1])),
        )
        tooltip = [
            alt.Tooltip("lang:N", title="language"),
            alt.Tooltip("method:N"),
            alt.Tooltip("layer:Q"),
            alt.Tooltip("score:Q", format=".3f"),
        ]
        lines = base.mark_line(strokeWidth=0.7).encode(
            detail="lang:N",
            color=alt.value("#aaaaaa"),
            opacity=alt.condition(alt.datum.lang == pick, alt.value(0.0), alt.value(0.6)),
            tooltip=tooltip,
        )
        mean = (
            base.mark_line(strokeWidth=3)
            .encode(y=alt.Y("mean(score):Q", title="alignment score"), tooltip=[])
            .encode(
                color=alt.Color("method:N", scale=self.method_scale(methods), legend=None),
            )
        )
        # every language drawn twice: grey, and black but transparent unless picked (a filter would leave an
        # empty layer, whose scale extent Vega warns about)
        picked = base.mark_line(strokeWidth=2.5, strokeDash=[5, 2], color="black").encode(
            detail="lang:N",
            opacity=alt.condition(alt.datum.lang == pick, alt.value(1.0), alt.value(0.0)),
            tooltip=tooltip,
        )
        return (
            alt.layer(lines, mean, picked)
            .properties(width=230, height=190)
            .facet(column=alt.Column("method:N", title=None, sort=methods), data=self.data(rows))
            .add_params(pick)
            .resolve_scale(x="independent")
        )

    def heatmap(self, rows: list[dict], methods: list[str], key: str, n_langs: int, n_layers: int) -> Any:
        """Language x layer, colour = score; languages ordered by their layer-mean score for that method."""
        alt = self.alt
        search = alt.param(name=f"find_{key}", value="", bind=alt.binding(input="search", name="filter languages: "))
        step = 18 if n_langs <= 8 else 14 if n_langs <= 40 else 9
        cell = max(4, min(16, (1100 // max(1, len(methods)) - 90) // max(1, n_layers)))  # the row fits ~1200 px
        data = self.data(rows)
        charts = []
        for method in methods:
            charts.append(
                alt.Chart(data, title=method)
                .transform_filter(alt.datum.method == method)
                .transform_joinaggregate(score_mean="mean(score)", groupby=["lang"])
                .transform_filter(f"{search.name} == '' || test(regexp({search.name}, 'i'), datum.lang)")
                .mark_rect()
                .encode(
                    x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0, labelOverlap=True)),
                    y=alt.Y(
                        "lang:N",
                        title="language (best first)" if method == methods[0] else None,
                        sort=alt.EncodingSortField("score", op="mean", order="descending"),
                        axis=alt.Axis(labelFontSize=10 if n_langs <= 40 else 7),
                    ),
                    color=alt.Color("score:Q", title="score", scale=alt.Scale(scheme="viridis", domain=[0, 1])),
                    tooltip=[
                        alt.Tooltip("lang:N", title="language"),
                        alt.Tooltip("layer:O"),
                        alt.Tooltip("score:Q", format=".3f"),
                        alt.Tooltip("score_mean:Q", title="mean over layers", format=".3f"),
                    ],
                )
                .properties(height=alt.Step(step), width=alt.Step(cell))
            )
        return alt.hconcat(*charts).add_params(search).resolve_scale(color="shared")

    def matrix(self, rows: list[dict], methods: list[str]) -> Any:
        """Pivot language x language, colour = layer-mean score."""
        alt = self.alt
        return (
            alt.Chart(self.data(rows))
            .mark_rect()
            .encode(
                x=alt.X("lang:N", title="language", axis=alt.Axis(labelAngle=-60)),
                y=alt.Y("pivot_lang:N", title="pivot language"),
                color=alt.Color("score_mean:Q", title="score", scale=alt.Scale(scheme="viridis", domain=[0, 1])),
                tooltip=[
                    alt.Tooltip("pivot_lang:N", title="pivot"),
                    alt.Tooltip("lang:N", title="language"),
                    alt.Tooltip("score_mean:Q", title="score", format=".3f"),
                ],
            )
            .properties(width=alt.Step(14), height=alt.Step(14))
            .facet(column=alt.Column("method:N", title=None, sort=methods))
        )

    def training(
        self,
        rows: list[dict],
        methods: list[str],
        langs: list[str],
        by_step: bool,
        order,
        key: str,
        bands: bool = False,
    ):
        """Layer-mean score against training step: mean over languages per method with its interval as a band,
        significant step changes marked, each language on hover."""
        alt = self.alt
        pick = self.lang_param(langs, f"curve_{key}")
        if by_step:
            x = alt.X("step:Q", title="training step", axis=alt.Axis(format="~s", labelOverlap=True))
        else:
            x = alt.X("checkpoint:O", title="checkpoint", sort=order, axis=alt.Axis(labelAngle=-45))
        tooltip = [
            alt.Tooltip("lang:N", title="language"),
            alt.Tooltip("method:N"),
            alt.Tooltip("checkpoint:N"),
            alt.Tooltip("step:Q"),
            alt.Tooltip("score_mean:Q", title="score", format=".3f"),
        ]
        if bands:
            tooltip += [
                alt.Tooltip("ci_low:Q", title="95% interval from", format=".3f"),
                alt.Tooltip("ci_high:Q", title="95% interval to", format=".3f"),
            ]
        mean_tooltip = [*tooltip, alt.Tooltip("change:Q", title="change from previous", format="+.3f")]
        mean_tooltip.append(alt.Tooltip("q_value:Q", title="q (Benjamini–Hochberg)", format=".3g"))
        base = alt.Chart().encode(
            x=x, y=alt.Y("score_mean:Q", title="layer-mean alignment score", scale=alt.Scale(domain=[0, 1]))
        )
        color = alt.Color("method:N", scale=self.method_scale(methods), legend=None)
        per_lang = (
            base.mark_line(strokeWidth=0.8, color="#aaaaaa", opacity=0.6)
            .encode(detail="lang:N", tooltip=tooltip)
            .transform_filter(alt.datum.lang != "*")
        )
        mean = (
            base.mark_line(strokeWidth=3, point=True)
            .encode(color=color, tooltip=mean_tooltip)
            .transform_filter(alt.datum.lang == "*")
        )
        marked = (
            base.mark_point(shape="diamond", size=140, filled=True, color="black", opacity=0.9)
            .encode(tooltip=mean_tooltip)
            .transform_filter((alt.datum.lang == "*") & (alt.datum.significant == "True"))
        )
        picked = base.mark_line(strokeWidth=2.5, strokeDash=[5, 2], color="black").encode(
            detail="lang:N",
            opacity=alt.condition(alt.datum.lang == pick, alt.value(1.0), alt.value(0.0)),
            tooltip=tooltip,
        )
        # A layer whose filter keeps no row gives Vega an empty extent (a console warning): draw marks only if any.
        drawn = [per_lang, mean, picked] + ([marked] if any(r.get("significant") for r in rows) else [])
        if bands:
            band = (
                base.mark_area(opacity=0.25)
                .encode(y="ci_low:Q", y2="ci_high:Q", color=color)
                .transform_filter(alt.datum.lang == "*")
            )
            drawn.insert(0, band)
        layers = alt.layer(*drawn).properties(width=230, height=190)
        if by_step:
            layers = layers.add_params(alt.selection_interval(bind="scales", encodings=["x"]))
        return layers.facet(column=alt.Column("method:N", title=None, sort=methods), data=self.data(rows)).add_params(
            pick
        )

    def retrieval_layers(self, rows: list[dict], methods: list[str]) -> Any:
        alt = self.alt
        return (
            alt.Chart(self.data(rows))
            .mark_line(strokeWidth=2)
            .encode(
                x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1)),
                y=alt.Y("accuracy:Q", title="retrieval accuracy (mean over languages)", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("method:N", scale=self.method_scale(methods), title="method"),
                strokeDash=alt.StrokeDash("direction:N", title="direction"),
                tooltip=[
                    alt.Tooltip("method:N"),
                    alt.Tooltip("direction:N"),
                    alt.Tooltip("layer:Q"),
                    alt.Tooltip("accuracy:Q", format=".3f"),
                ],
            )
            .properties(width=360, height=220)
        )

    def retrieval_scatter(self, rows: list[dict], methods: list[str]) -> Any:
        """Per language: pivot → language against language → pivot (layer means); off the diagonal = asymmetric."""
        alt = self.alt
        diagonal = (
            alt.Chart(alt.Data(values=[{"a": 0, "b": 0}, {"a": 1, "b": 1}]))
            .mark_line(color="#999", strokeDash=[3, 3])
            .encode(x="a:Q", y="b:Q")
        )
        points = (
            alt.Chart(self.data(rows))
            .mark_point(filled=True, size=50, opacity=0.8)
            .encode(
                x=alt.X("pivot_to_lang:Q", title="pivot → language accuracy", scale=alt.Scale(domain=[0, 1])),
                y=alt.Y("lang_to_pivot:Q", title="language → pivot accuracy", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("method:N", scale=self.method_scale(methods), title="method"),
                shape=alt.Shape("method:N", title="method", scale=alt.Scale(domain=methods)),
                tooltip=[
                    alt.Tooltip("lang:N", title="language"),
                    alt.Tooltip("method:N"),
                    alt.Tooltip("pivot_to_lang:Q", title="pivot → language", format=".3f"),
                    alt.Tooltip("lang_to_pivot:Q", title="language → pivot", format=".3f"),
                    alt.Tooltip("asymmetry:Q", title="asymmetry (→lang − →pivot)", format="+.3f"),
                ],
            )
        )
        return (
            alt.layer(diagonal, points)
            .properties(width=300, height=300)
            .add_params(alt.selection_interval(bind="scales"))
        )

    def correlation(self, rows: list[dict], title: str, methods: list[str]) -> Any:
        alt = self.alt
        pts = (
            alt.Chart()
            .mark_point(filled=True, size=60)
            .encode(
                x=alt.X("score:Q", title="layer-mean alignment score", scale=alt.Scale(zero=False, padding=14)),
                y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, padding=14)),
                color=alt.Color("method:N", scale=self.method_scale(methods), legend=None),
                tooltip=[
                    alt.Tooltip("lang:N", title="language"),
                    alt.Tooltip("score:Q", format=".3f"),
                    alt.Tooltip("value:Q", title=title, format=".3f"),
                ],
            )
        )
        text = pts.mark_text(align="left", dx=6, fontSize=10, color="#444").encode(text="lang:N", tooltip=[])
        fit = (
            alt.Chart()
            .transform_regression("score", "value")
            .mark_line(color="#888", strokeDash=[4, 3])
            .encode(x="score:Q", y="value:Q")
        )
        return (
            alt.layer(pts, fit, text)
            .properties(width=220, height=200)
            .add_params(alt.selection_interval(bind="scales"))
            .facet(
                column=alt.Column("label:N", title=None, sort=[r["label"] for r in rows]),
                data=self.data(rows),
            )
            .resolve_scale(x="independent")
        )

    def neurons(self, rows: list[dict], n_langs: int, n_layers: int) -> Any:
        alt = self.alt
        return (
            alt.Chart(self.data(rows))
            .mark_rect()
            .encode(
                x=alt.X(
                    "layer:O",
                    title="layer (FFN block)",
                    axis=alt.Axis(labelAngle=0),
                    scale=alt.Scale(domain=list(range(n_layers))),
                ),
                y=alt.Y(
                    "lang:N", title="language", sort=alt.EncodingSortField("n_neurons", op="sum", order="descending")
                ),
                color=alt.Color("n_neurons:Q", title="neurons", scale=alt.Scale(scheme="orangered")),
                tooltip=[
                    alt.Tooltip("lang:N", title="language"),
                    alt.Tooltip("layer:O"),
                    alt.Tooltip("n_neurons:Q", title="language-specific neurons"),
                ],
            )
            .properties(width=alt.Step(16), height=alt.Step(14 if n_langs <= 40 else 8))
        )

    def pair_heatmap(self, rows: list[dict], a: str, b: str, value: str) -> Any:
        alt = self.alt
        return (
            alt.Chart(self.data(rows))
            .mark_rect()
            .encode(
                x=alt.X(f"{b}:N", title=b, axis=alt.Axis(labelAngle=-60)),
                y=alt.Y(f"{a}:N", title=a),
                color=alt.Color(f"{value}:Q", title=value, scale=alt.Scale(scheme="blues")),
                tooltip=[alt.Tooltip(f"{a}:N"), alt.Tooltip(f"{b}:N"), alt.Tooltip(f"{value}:Q", format=".3f")],
            )
            .properties(width=alt.Step(14), height=alt.Step(14))
        )

    def throughput(self, rows: list[dict]) -> Any:
        alt = self.alt
        return (
            alt.Chart(self.data(rows))
            .mark_bar()
            .encode(
                y=alt.Y("run:N", title=None, sort=None),
                x=alt.X("sentences_per_s:Q", title="sentences / s (after start-up)"),
                tooltip=[
                    alt.Tooltip("run:N"),
                    alt.Tooltip("sentences_per_s:Q", format=".1f"),
                    alt.Tooltip("wall_s:Q", title="wall s", format=".1f"),
                    alt.Tooltip("device:N"),
                ],
            )
            .properties(width=360, height=alt.Step(14))
        )


# ---------------------------------------------------------------------------------------------------- sections


def _title(model: str, ckpt: str, pivot: str | None = None) -> str:
    return f"{model} @ {ckpt}" + (f", pivot {pivot}" if pivot else "")


def _layers_section(con, charts: _Charts, scope: Scope) -> list[Section]:
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
            rows = _records(
                con,
                """SELECT method, lang, layer, score FROM alignment
                   WHERE model = ? AND checkpoint = ? AND pivot_lang = ? ORDER BY method, lang, layer""",
                [model, ckpt, pivot],
            )
            if not rows:
                continue
            methods = _methods(rows)
            _with_labels(rows)
            langs = sorted({r["lang"] for r in rows})
            n_layers = max(r["layer"] for r in rows) + 1
            key = f"{len(sec.figures)}"
            sec.figures.append(
                charts.figure(
                    charts.per_layer(rows, langs, methods, key),
                    f"Score per layer: {_title(model, ckpt, pivot)}",
                    len(rows),
                    f"{len(langs)} languages, methods {', '.join(methods)}.",
                )
            )
            heat.figures.append(
                charts.figure(
                    charts.heatmap(rows, methods, key, len(langs), n_layers),
                    f"Language × layer: {_title(model, ckpt, pivot)}",
                    len(rows),
                )
            )
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


def _matrix_section(con, charts: _Charts, scope: Scope, views: set[str]) -> Section | None:
    view = "alignment_matrix" if "alignment_matrix" in views else "alignment_summary"
    sec = Section(
        "matrix",
        "Language × language",
        f"Layer-mean score for every pivot and language pair (view `{view}`).",
    )
    cols = _columns(con, view)
    value = "score_mean" if "score_mean" in cols else next((c for c in cols if c.startswith("score")), None)
    if not {"model", "checkpoint", "method", "pivot_lang", "lang"} <= set(cols) or value is None:
        sec.notes.append(f"View `{view}` lacks the columns model, checkpoint, method, pivot_lang, lang, score.")
        return sec
    for model, ckpt in scope.detail:
        rows = _records(
            con,
            f"""SELECT method, pivot_lang, lang, avg({value}) AS score_mean FROM {view}
                WHERE model = ? AND checkpoint = ? GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        if len({r["pivot_lang"] for r in rows}) < 2:
            continue
        methods = _methods(rows)
        sec.figures.append(
            charts.figure(
                charts.matrix(_with_labels(rows), methods), f"Pivot × language: {_title(model, ckpt)}", len(rows)
            )
        )
    return sec if sec.figures else None


SIGNIFICANCE_FDR = 0.05  # a step is marked when its change is significant at this false discovery rate


def _training_section(con, charts: _Charts, scope: Scope, views: set[str]) -> Section:
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
    cols = set(_columns(con, "training_curve"))
    bands = ", ci_low, ci_high" if {"ci_low", "ci_high"} <= cols else ""
    for model, ckpts in scope.checkpoints.items():
        if len(ckpts) < 2:
            continue
        where, params = _in("checkpoint", ckpts)
        rows = _records(
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
            methods = _methods(part)
            _with_labels(part)
            langs = sorted({r["lang"] for r in part} - {"*"})
            by_step = all(scope.steps.get((model, c)) is not None for c in ckpts)
            n_marked = sum(r["significant"] for r in part)
            sec.figures.append(
                charts.figure(
                    charts.training(part, methods, langs, by_step, ckpts, f"{len(sec.figures)}", bool(bands)),
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


def _retrieval_section(con, charts: _Charts, scope: Scope) -> Section:
    sec = Section(
        "retrieval",
        "Retrieval in both directions",
        "Retrieval accuracy: pivot → language (row criterion: the parallel sentence is the nearest among the "
        "language's sentences) and language → pivot (column criterion); NAS (NASCA) against hidden states (MEXA). "
        "Asymmetry = pivot → language − language → pivot, per language as a mean over layers.",
    )
    for model, ckpt in scope.detail:
        base = """FROM retrieval WHERE model = ? AND checkpoint = ? AND method IN ('nas', 'hidden')"""
        layer_rows = _records(
            con,
            f"""SELECT pivot_lang, method, direction, layer, avg(accuracy) AS accuracy {base}
                GROUP BY ALL ORDER BY ALL""",
            [model, ckpt],
        )
        lang_rows = _records(
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
            methods = _methods(lr)
            _with_labels(lr)
            _with_labels(gr)
            for r in lr:
                r["direction"] = DIRECTION_LABELS.get(r["direction"], r["direction"])
            sec.figures.append(
                charts.figure(
                    charts.retrieval_layers(lr, methods), f"Retrieval per layer: {_title(model, ckpt, pivot)}", len(lr)
                )
            )
            sec.figures.append(
                charts.figure(
                    charts.retrieval_scatter(gr, methods),
                    f"Retrieval asymmetry per language: {_title(model, ckpt, pivot)}",
                    len(gr),
                    "Points below the diagonal: finding the language's sentence from the pivot is easier "
                    "than the reverse.",
                )
            )
            sec.tables.append(_asymmetry_table(gr, _title(model, ckpt, pivot)))
    if not sec.figures:
        sec.notes.append("No retrieval rows for NAS or hidden states in the lake.")
    return sec


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
    return _table(head, body, f"Retrieval, mean over languages and layers: {title}")


def _correlation_section(con, charts: _Charts, scope: Scope) -> Section | None:
    n_bench = con.execute("SELECT count(*) FROM benchmarks").fetchone()[0]
    if not n_bench:
        return None
    sec = Section(
        "correlation",
        "Alignment against downstream benchmarks",
        "Each point is a language: layer-mean alignment score against an imported benchmark result "
        "(`neuronxa-ray import-benchmarks`). Pearson r and Spearman ρ across languages from view `correlation`.",
    )
    cols = _columns(con, "correlation")
    p_cols = [c for c in ("pearson_p", "spearman_p") if c in cols]
    select = ", ".join(["pearson", "spearman", *p_cols])
    for model, ckpt in scope.detail:
        stats = {
            (r["method"], r["pivot_lang"], r["benchmark"]): r
            for r in _records(
                con,
                f"""SELECT method, pivot_lang, benchmark, n_languages, {select} FROM correlation
                    WHERE model = ? AND checkpoint = ?""",
                [model, ckpt],
            )
        }
        pairs = _records(  # the view's points: languages meet on canonical codes (fr = fra), one value each
            con,
            """SELECT method, pivot_lang, benchmark, lang, score, value FROM benchmark_pairs
               WHERE model = ? AND checkpoint = ? ORDER BY ALL""",
            [model, ckpt],
        )
        for pivot, bench in sorted({(r["pivot_lang"], r["benchmark"]) for r in pairs}):
            part = [r for r in pairs if r["pivot_lang"] == pivot and r["benchmark"] == bench]
            methods = _methods(part)
            labels = {}
            for m in {r["method"] for r in part}:
                st = stats.get((m, pivot, bench), {})
                labels[m] = f"{_label(m)}: {_stat_text(st, p_cols)}"
            for r in part:
                r["label"] = labels[r["method"]]
            part.sort(key=lambda r: methods.index(_label(r["method"])))
            _with_labels(part)
            sec.figures.append(
                charts.figure(
                    charts.correlation(part, bench, methods),
                    f"{bench} against alignment: {_title(model, ckpt, pivot)}",
                    len(part),
                )
            )
        if stats:
            head = ["method", "pivot", "benchmark", "languages", "Pearson r", "Spearman ρ", *p_cols]
            body = [
                [_label(m), p, b, str(r["n_languages"]), *(_fmt(r[c]) for c in ("pearson", "spearman", *p_cols))]
                for (m, p, b), r in sorted(stats.items())
            ]
            sec.tables.append(_table(head, body, f"Correlations: {_title(model, ckpt)}"))
    if not p_cols:
        sec.notes.append("The `correlation` view of this lake has no p-value columns.")
    if not sec.figures:
        sec.notes.append("Benchmarks are imported but none shares a language with the scored ones.")
    return sec


def _stat_text(st: dict, p_cols: list[str]) -> str:
    if not st:
        return "no correlation row"
    r = f"r={_fmt(st.get('pearson'), 2)}"
    rho = f"ρ={_fmt(st.get('spearman'), 2)}"
    if "pearson_p" in p_cols:
        r += f" (p={_fmt(st.get('pearson_p'), 3)})"
    if "spearman_p" in p_cols:
        rho += f" (p={_fmt(st.get('spearman_p'), 3)})"
    return f"{r}, {rho}, n={st.get('n_languages')}"


def _neurons_section(con, charts: _Charts, scope: Scope, views: set[str]) -> Section:
    sec = Section(
        "neurons",
        "Language-specific neurons",
        "FFN neurons that fire for few languages (LAPE: low entropy of activation probabilities across languages, "
        "view `language_specific_neurons`), counted per layer and language.",
    )
    for model, ckpt in scope.detail:
        rows = _records(
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
                    charts.neurons(rows, n_langs, int(n_layers)),
                    f"Language-specific neurons: {_title(model, ckpt)}",
                    len(rows),
                    f"{sum(r['n_neurons'] for r in rows)} (neuron, language) assignments.",
                )
            )
    overlap = sorted(v for v in views if "overlap" in v)
    for view in overlap:
        cols = _columns(con, view)
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
            continue
        a, b = langs[0], langs[1]
        value = "jaccard" if "jaccard" in numeric else numeric[0]
        for model, ckpt in scope.detail:
            rows = _records(
                con,
                f"""SELECT "{a}", "{b}", avg("{value}") AS "{value}" FROM {view}
                    WHERE model = ? AND checkpoint = ? GROUP BY ALL ORDER BY ALL""",
                [model, ckpt],
            )
            if rows:
                sec.figures.append(
                    charts.figure(
                        charts.pair_heatmap(rows, a, b, value),
                        f"Neuron overlap ({view}): {_title(model, ckpt)}",
                        len(rows),
                    )
                )
    if not overlap:
        sec.notes.append("No neuron-overlap view in this lake's SQL.")
    if not any(f.title.startswith("Language-specific") for f in sec.figures):
        sec.notes.append("No language-specific neurons: the lake has no neuron counts (or too few languages).")
    return sec


RUN_COLUMNS = (
    "model", "checkpoint", "step", "pivot_lang", "n_languages", "n_languages_computed", "n_sentences", "n_layers",
    "d_ff", "hook_site", "device", "dtype", "num_actors", "started_at", "wall_s", "startup_s", "extract_s",
    "write_s", "n_tokens", "sentences_per_s", "code_version", "torch_version", "transformers_version",
)  # fmt: skip


def _runs_section(con, charts: _Charts, scope: Scope) -> Section:
    sec = Section("runs", "Runs", "Every run recorded in the lake (view `runs`; a rerun adds a row).")
    cols = _columns(con, "runs")
    shown = [c for c in RUN_COLUMNS if c in cols]
    where, params = _in("model", scope.models) if scope.models else ("true", [])
    rows = _records(
        con,
        f"""SELECT {", ".join(shown)}{", config_json" if "config_json" in cols else ""} FROM runs
            WHERE {where} ORDER BY model, step NULLS LAST, checkpoint, started_at""",
        params,
    )
    if not rows:
        sec.notes.append("No runs recorded (the `runs` table is written when a job finishes).")
        return sec
    body = [[_fmt(r[c]) for c in shown] for r in rows]
    sec.tables.append(_table(list(shown), body, "Runs: settings, code version, timings and throughput", wide=True))
    settings = [
        f"<details><summary>settings of {html.escape(r['model'])} @ {html.escape(r['checkpoint'])} "
        f"({html.escape(str(r.get('started_at')))})</summary><pre>{html.escape(_pretty(r.get('config_json')))}</pre>"
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
        sec.figures.append(charts.figure(charts.throughput(tp), "Throughput per run", len(tp)))
    return sec


def _pretty(text: str | None) -> str:
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** (-digits) or v == 0 else f"{v:.1e}"
    return str(v)


def _table(head: list[str], body: list[list[str]], caption: str, wide: bool = False) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    cls = ' class="wide"' if wide else ""
    return (
        f'<div class="tablewrap"><table{cls}><caption>{html.escape(caption)}</caption>'
        f"<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>"
    )


# ---------------------------------------------------------------------------------------------------- assembly


def build_report(
    lake: str | Path, models: Sequence[str] | None = None, checkpoints: Sequence[str] | None = None
) -> Report:
    """Query the lake's views and build every section's figures (Vega-Lite specs); nothing is written."""
    alt, _ = _require_plotting()
    from neuronxa_ray.lake import Lake
    from neuronxa_ray.query import connect

    root = Lake(lake)  # a directory or an object-store URI
    if not root.exists():
        raise NeuronxaError(f"lake {root.uri!r} does not exist (run a job first, or pass --lake DIR)")
    con = connect(root)
    con.execute("SET enable_progress_bar = false")  # DuckDB's bar would print into logs and CI output
    views = _views(con)
    scope = resolve_scope(con, models, checkpoints)
    _cache_alignment(con, scope)
    charts = _Charts(alt)
    missing: list[str] = []
    if not scope.models:
        missing.append("No alignment scores: the lake has no per-sentence matches (`matches`); run a job first.")

    steps: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
        ("layers", lambda: _layers_section(con, charts, scope), ("alignment", "alignment_summary")),
        ("matrix", lambda: _matrix_section(con, charts, scope, views), ("alignment_summary",)),
        ("training", lambda: _training_section(con, charts, scope, views), ("training_curve",)),
        ("retrieval", lambda: _retrieval_section(con, charts, scope), ("retrieval",)),
        ("correlation", lambda: _correlation_section(con, charts, scope), ("correlation", "benchmark_pairs")),
        ("neurons", lambda: _neurons_section(con, charts, scope, views), ("language_specific_neurons",)),
        ("runs", lambda: _runs_section(con, charts, scope), ("runs",)),
    ]
    sections: list[Section] = []
    for name, make, needs in steps:
        absent = [v for v in needs if v not in views and v not in RAW_VIEWS]
        if absent:
            missing.append(f"Section '{name}' skipped: view {', '.join(absent)} is not defined in this lake's SQL.")
            continue
        try:
            made = make()
        except Exception as e:  # one broken view must not cost the whole report
            log.warning("report section %s failed: %s", name, e)
            missing.append(f"Section '{name}' could not be built: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        for sec in made if isinstance(made, list) else [made]:
            if sec is not None:
                sections.append(sec)
                missing.extend(f"{sec.title}: {n}" for n in sec.notes if sec.figures == [] and not sec.tables)
    if not any(s.id == "correlation" for s in sections):
        log.info("no benchmarks in the lake: no correlation section")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return Report(root.uri, created, sections, missing, charts.datasets)


RAW_VIEWS = ("runs", "benchmarks", "matches", "similarity", "sentence_states", "neuron_counts", "attempts")

CSS = """
:root { --fg: #222; --muted: #666; --line: #ddd; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1280px; padding: 0 24px 48px; }
header { border-bottom: 2px solid var(--fg); margin-bottom: 12px; }
h1 { font-size: 24px; margin: 18px 0 4px; }
h2 { font-size: 19px; margin: 28px 0 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 4px; }
.meta, .intro, figcaption, .note { color: var(--muted); }
nav ul { display: flex; flex-wrap: wrap; gap: 4px 16px; list-style: none; padding: 0; margin: 8px 0; }
nav a { color: #1f5fa8; text-decoration: none; }
figure { margin: 12px 0 22px; overflow-x: auto; }
.vega-embed { max-width: 100%; }
.missing { background: #fff6e0; border-left: 4px solid #e0a100; padding: 6px 12px; }
.note { font-style: italic; }
.tablewrap { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 12px; } caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
details pre { font-size: 11px; background: #f8f8f8; padding: 6px; overflow-x: auto; }
.vega-bindings { font-size: 12px; margin: 4px 0; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav, .vega-bindings, .vega-embed summary, details { display: none !important; }
  section { break-before: page; } section:first-of-type { break-before: auto; }
  figure { break-inside: avoid; overflow: visible; }
  table.wide { font-size: 8px; } .tablewrap { overflow: visible; }
  a { color: inherit; }
}
"""

EMBED_JS = """
(function () {
  const opts = {actions: {export: true, source: false, compiled: false, editor: false}, tooltip: {theme: 'light'}};
  const datasets = JSON.parse(document.getElementById('nxr-datasets').textContent);
  const jobs = [];
  for (const el of document.querySelectorAll('script[type="application/json"][data-figure]')) {
    const target = document.getElementById(el.dataset.figure);
    const spec = JSON.parse(el.textContent);
    spec.datasets = Object.assign({}, spec.datasets || {});
    for (const name of el.dataset.datasets.split(' ').filter(Boolean)) spec.datasets[name] = datasets[name];
    jobs.push(vegaEmbed(target, spec, Object.assign({renderer: el.dataset.renderer}, opts))
      .then(() => target.setAttribute('data-rendered', 'true'))
      .catch((err) => { target.textContent = 'figure failed: ' + err; console.error(err); }));
  }
  Promise.all(jobs).then(() => {
    document.body.setAttribute('data-figures-ms', String(Math.round(performance.now())));
  });
})();
"""


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no '</' can close the tag early."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_html(report: Report) -> str:
    """The whole page: CSS, the Vega bundle (inlined, no network), every spec, and the tables."""
    _, vlc = _require_plotting()
    bundle = vlc.javascript_bundle(vl_version=_vl_version()).replace("</script", "<\\/script")
    nav = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in report.sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>neuronxa_ray report: {html.escape(Path(report.lake).name)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>NeuronXA / MEXA alignment report</h1>",
        f'<p class="meta">lake <code>{html.escape(report.lake)}</code>, generated {html.escape(report.created)} '
        f"by neuronxa_ray. Hover a mark for its language and value; drag to pan and scroll to zoom where "
        f"axes are numeric; double-click to reset.</p>",
        f"<nav><ul>{nav}</ul></nav></header>",
    ]
    if report.missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in report.missing)
        parts.append(f'<div class="missing" id="missing"><strong>Missing from this lake</strong><ul>{items}</ul></div>')
    for sec in report.sections:
        parts.append(f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>')
        if sec.intro:
            parts.append(f'<p class="intro">{html.escape(sec.intro)}</p>')
        for fig in sec.figures:
            renderer = "svg" if fig.n_rows <= SVG_MAX_ROWS else "canvas"
            cap = f"<figcaption>{html.escape(fig.caption)}</figcaption>" if fig.caption else ""
            parts.append(
                f'<figure><h3>{html.escape(fig.title)}</h3><div class="figure" id="{fig.id}"></div>{cap}'
                f'<script type="application/json" data-figure="{fig.id}" data-renderer="{renderer}" '
                f'data-datasets="{" ".join(fig.datasets)}">'
                f"{_script_json(fig.spec)}</script></figure>"
            )
        parts.extend(sec.tables)
        parts.extend(f'<p class="note">{html.escape(n)}</p>' for n in sec.notes)
        parts.append("</section>")
    if not report.sections:
        parts.append('<p class="note">Nothing to show yet.</p>')
    used = {n for f in report.figures for n in f.datasets}
    datasets = {n: t for n, t in report.datasets.items() if n in used}
    parts.append(f'<script type="application/json" id="nxr-datasets">{_script_json(datasets)}</script>')
    parts.append(f"<script>{bundle}</script>")
    parts.append(f"<script>{EMBED_JS}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_figures(
    report: Report, directory: str | Path, formats: Sequence[str] = ("png", "svg"), scale: float = 2.0
) -> list[Path]:
    """Each figure as static files (<id>-<slug>.png/.svg) for papers and slides, rendered by vl-convert."""
    _, vlc = _require_plotting()
    from neuronxa_ray.lake import slug

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fig in report.figures:
        stem = out_dir / f"{fig.id}-{slug(fig.title)[:80]}"
        spec = dict(fig.spec, title=fig.title)
        spec["datasets"] = {**spec.get("datasets", {}), **{n: report.datasets[n] for n in fig.datasets}}
        for fmt in formats:
            if fmt == "png":
                data = vlc.vegalite_to_png(spec, vl_version=_vl_version(), scale=scale)
                path = stem.with_suffix(".png")
                path.write_bytes(data)
            elif fmt == "svg":
                path = stem.with_suffix(".svg")
                path.write_text(vlc.vegalite_to_svg(spec, vl_version=_vl_version()), encoding="utf-8")
            else:
                raise NeuronxaError(f"figure format {fmt!r} is not supported (allowed: png, svg)")
            written.append(path)
    return written


def write_report(
    lake: str | Path,
    output: str | Path,
    models: Sequence[str] | None = None,
    checkpoints: Sequence[str] | None = None,
    figures_dir: str | Path | None = None,
    figure_formats: Sequence[str] = ("png", "svg"),
) -> Report:
    """Build the report from the lake, write the HTML file (and the figures, when asked); returns the Report."""
    report = build_report(lake, models, checkpoints)
    page = render_html(report)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    log.info(
        "report: %d sections, %d figures, %d bytes -> %s", len(report.sections), len(report.figures), len(page), out
    )
    if figures_dir is not None:
        write_figures(report, figures_dir, figure_formats)
    return report
