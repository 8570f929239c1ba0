"""The report's data: what a figure, a section and a report are, which models and checkpoints it covers, and the
DuckDB queries every section reads the lake's views with (rows as small JSON-ready dicts). No plotting here."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.methods import METHODS, label

MAX_DETAIL_CHECKPOINTS = 3  # a model with more checkpoints gets per-layer figures for its latest one only


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
    datasets: dict[str, str] = field(default_factory=dict)  # name -> CSV text, see charts.Charts.data

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


def view_names(con) -> set[str]:
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    return {r[0] for r in rows}


def column_names(con, relation: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def records(con, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
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


def where_in(column: str, values: Sequence[str]) -> tuple[str, list[str]]:
    """A `column IN (?, ...)` condition and its parameters; no values match nothing."""
    if not values:
        return "false", []
    return f"{column} IN ({', '.join('?' for _ in values)})", list(values)


def method_labels(rows: list[dict[str, Any]]) -> list[str]:
    """The labels of the rows' methods, in the order they are drawn (unknown methods last, by name)."""
    present = {r["method"] for r in rows}
    return [label(m) for m in METHODS if m in present] + sorted(label(m) for m in present if m not in METHODS)


def with_labels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each method replaced by its label (in place)."""
    for r in rows:
        r["method"] = label(r["method"])
    return rows


def resolve_scope(con, models: Sequence[str] | None, checkpoints: Sequence[str] | None) -> Scope:
    """Models and checkpoints with scores in the lake, filtered; NeuronxaError names an unknown one."""
    # an intervention's results are a model of their own in the views; the report shows them with their base model
    variants = {
        m for (m,) in con.execute("SELECT DISTINCT model FROM perplexity WHERE intervention <> 'none'").fetchall()
    }
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
    rows = [r for r in rows if (r[0] in models if models else r[0] not in variants)]
    rows = [r for r in rows if not checkpoints or r[1] in checkpoints]
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


def cache_alignment(con, scope: Scope) -> None:
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
