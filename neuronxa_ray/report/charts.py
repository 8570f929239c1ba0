"""The report's charts: Vega-Altair builders, one function per kind of figure, over the shared datasets and scales
that `Charts` keeps for one report. Charts know rows and labels, never the lake or the page."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from typing import Any

from neuronxa_ray.report.model import Figure

METHOD_COLORS = {"NASCA": "#1f77b4", "NAVCA": "#ff7f0e", "MEXA": "#2ca02c", "MEXA-last": "#9467bd"}


def require_plotting():
    """altair and vl_convert, or an ImportError naming the extra to install."""
    try:
        import altair as alt
        import vl_convert as vlc
    except ImportError as e:
        raise ImportError(
            f"the report needs the plotting extra: pip install 'neuronxa_ray[report]' (missing: {e.name})"
        ) from e
    return alt, vlc


class Charts:
    """The figures of one report: their numbering, the CSV datasets they share, and the scales they have in
    common; every figure gets a stable id and its row count."""

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

    def picked_line(self, base, pick, tooltip: list):
        """Every language drawn black but transparent unless picked (a filter would leave an empty layer, whose
        scale extent Vega warns about)."""
        alt = self.alt
        return base.mark_line(strokeWidth=2.5, strokeDash=[5, 2], color="black").encode(
            detail="lang:N",
            opacity=alt.condition(alt.datum.lang == pick, alt.value(1.0), alt.value(0.0)),
            tooltip=tooltip,
        )


# ------------------------------------------------------------------------------------------ layers and heatmaps


def per_layer(charts: Charts, rows: list[dict], langs: list[str], methods: list[str], key: str) -> Any:
    """Score against layer: mean over languages per method (thick), every language thin, one highlighted."""
    alt = charts.alt
    pick = charts.lang_param(langs, f"lang_{key}")
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
            color=alt.Color("method:N", scale=charts.method_scale(methods), legend=None),
        )
    )
    picked = charts.picked_line(base, pick, tooltip)  # every language drawn twice: grey, and black when picked
    return (
        alt.layer(lines, mean, picked)
        .properties(width=230, height=190)
        .facet(column=alt.Column("method:N", title=None, sort=methods), data=charts.data(rows))
        .add_params(pick)
        .resolve_scale(x="independent")
    )


def heatmap(charts: Charts, rows: list[dict], methods: list[str], key: str, n_langs: int, n_layers: int) -> Any:
    """Language x layer, colour = score; languages ordered by their layer-mean score for that method."""
    alt = charts.alt
    search = alt.param(name=f"find_{key}", value="", bind=alt.binding(input="search", name="filter languages: "))
    step = 18 if n_langs <= 8 else 14 if n_langs <= 40 else 9
    cell = max(4, min(16, (1100 // max(1, len(methods)) - 90) // max(1, n_layers)))  # the row fits ~1200 px
    data = charts.data(rows)
    panels = []
    for method in methods:
        panels.append(
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
    return alt.hconcat(*panels).add_params(search).resolve_scale(color="shared")


def matrix(charts: Charts, rows: list[dict], methods: list[str]) -> Any:
    """Pivot language x language, colour = layer-mean score."""
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
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


# ---------------------------------------------------------------------------------------------------- training


def _training_tooltips(alt, bands: bool) -> tuple[list, list]:
    """Tooltips of a language's line, and of the mean's line and marks (with the change and its q-value)."""
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
    return tooltip, mean_tooltip


def training(
    charts: Charts,
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
    alt = charts.alt
    pick = charts.lang_param(langs, f"curve_{key}")
    if by_step:
        x = alt.X("step:Q", title="training step", axis=alt.Axis(format="~s", labelOverlap=True))
    else:
        x = alt.X("checkpoint:O", title="checkpoint", sort=order, axis=alt.Axis(labelAngle=-45))
    tooltip, mean_tooltip = _training_tooltips(alt, bands)
    base = alt.Chart().encode(
        x=x, y=alt.Y("score_mean:Q", title="layer-mean alignment score", scale=alt.Scale(domain=[0, 1]))
    )
    color = alt.Color("method:N", scale=charts.method_scale(methods), legend=None)
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
    picked = charts.picked_line(base, pick, tooltip)
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
    return layers.facet(column=alt.Column("method:N", title=None, sort=methods), data=charts.data(rows)).add_params(
        pick
    )


# ----------------------------------------------------------------------------------- retrieval and correlation


def retrieval_layers(charts: Charts, rows: list[dict], methods: list[str]) -> Any:
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
        .mark_line(strokeWidth=2)
        .encode(
            x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("accuracy:Q", title="retrieval accuracy (mean over languages)", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("method:N", scale=charts.method_scale(methods), title="method"),
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


def retrieval_scatter(charts: Charts, rows: list[dict], methods: list[str]) -> Any:
    """Per language: pivot → language against language → pivot (layer means); off the diagonal = asymmetric."""
    alt = charts.alt
    diagonal = (
        alt.Chart(alt.Data(values=[{"a": 0, "b": 0}, {"a": 1, "b": 1}]))
        .mark_line(color="#999", strokeDash=[3, 3])
        .encode(x="a:Q", y="b:Q")
    )
    points = (
        alt.Chart(charts.data(rows))
        .mark_point(filled=True, size=50, opacity=0.8)
        .encode(
            x=alt.X("pivot_to_lang:Q", title="pivot → language accuracy", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("lang_to_pivot:Q", title="language → pivot accuracy", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("method:N", scale=charts.method_scale(methods), title="method"),
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
        alt.layer(diagonal, points).properties(width=300, height=300).add_params(alt.selection_interval(bind="scales"))
    )


def correlation(charts: Charts, rows: list[dict], title: str, methods: list[str]) -> Any:
    alt = charts.alt
    pts = (
        alt.Chart()
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("score:Q", title="layer-mean alignment score", scale=alt.Scale(zero=False, padding=14)),
            y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, padding=14)),
            color=alt.Color("method:N", scale=charts.method_scale(methods), legend=None),
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
            data=charts.data(rows),
        )
        .resolve_scale(x="independent")
    )


# ------------------------------------------------------------------------------------------- neurons and runs


def neurons(charts: Charts, rows: list[dict], n_langs: int, n_layers: int) -> Any:
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
        .mark_rect()
        .encode(
            x=alt.X(
                "layer:O",
                title="layer (FFN block)",
                axis=alt.Axis(labelAngle=0),
                scale=alt.Scale(domain=list(range(n_layers))),
            ),
            y=alt.Y("lang:N", title="language", sort=alt.EncodingSortField("n_neurons", op="sum", order="descending")),
            color=alt.Color("n_neurons:Q", title="neurons", scale=alt.Scale(scheme="orangered")),
            tooltip=[
                alt.Tooltip("lang:N", title="language"),
                alt.Tooltip("layer:O"),
                alt.Tooltip("n_neurons:Q", title="language-specific neurons"),
            ],
        )
        .properties(width=alt.Step(16), height=alt.Step(14 if n_langs <= 40 else 8))
    )


def pair_heatmap(charts: Charts, rows: list[dict], a: str, b: str, value: str) -> Any:
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
        .mark_rect()
        .encode(
            x=alt.X(f"{b}:N", title=b, axis=alt.Axis(labelAngle=-60)),
            y=alt.Y(f"{a}:N", title=a),
            color=alt.Color(f"{value}:Q", title=value, scale=alt.Scale(scheme="blues")),
            tooltip=[alt.Tooltip(f"{a}:N"), alt.Tooltip(f"{b}:N"), alt.Tooltip(f"{value}:Q", format=".3f")],
        )
        .properties(width=alt.Step(14), height=alt.Step(14))
    )


def throughput(charts: Charts, rows: list[dict]) -> Any:
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
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


def intervention_matrix(charts: Charts, rows: list[dict]) -> Any:
    """Switched-off language x evaluated language, colour = perplexity ratio (log scale around 1), one panel per
    kind of set (LAPE's language-specific neurons, the random control of equal size)."""
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
        .mark_rect()
        .encode(
            x=alt.X("lang:N", title=None, axis=alt.Axis(labelAngle=-60)),
            y=alt.Y("switched_off:N", title="neurons switched off"),
            color=alt.Color(
                "perplexity_ratio:Q",
                title="perplexity ratio",
                scale=alt.Scale(type="log", scheme="redblue", reverse=True, domainMid=1),
            ),
            column=alt.Column("kind:N", title="evaluated language, with neurons switched off of the set:"),
            tooltip=[
                alt.Tooltip("switched_off:N", title="off"),
                alt.Tooltip("lang:N", title="evaluated"),
                alt.Tooltip("intervention:N"),
                alt.Tooltip("perplexity_ratio:Q", format=".3f"),
                alt.Tooltip("perplexity:Q", format=".2f"),
                alt.Tooltip("perplexity_none:Q", title="perplexity, none off", format=".2f"),
                alt.Tooltip("n_neurons:Q", title="neurons off"),
            ],
        )
        .properties(width=alt.Step(18), height=alt.Step(18))
    )


def intervention_diagonal(charts: Charts, rows: list[dict]) -> Any:
    """The matrix's diagonal over training: per step, the mean over languages of the perplexity ratio of a language
    with its own neurons switched off, LAPE against the random control."""
    alt = charts.alt
    return (
        alt.Chart(charts.data(rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("perplexity_ratio:Q", title="perplexity ratio, own neurons off", scale=alt.Scale(type="log")),
            color=alt.Color("kind:N", title="set"),
            tooltip=[
                alt.Tooltip("checkpoint:N"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("kind:N"),
                alt.Tooltip("perplexity_ratio:Q", format=".3f"),
            ],
        )
        .properties(width=420, height=220)
    )
