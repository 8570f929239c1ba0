"""Building a report: open the lake's views, fix the scope, cache `alignment`, and run every section whose views
exist, turning a broken one into a line under "missing" instead of a failed report. Nothing is written here."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.report import sections
from neuronxa_ray.report.charts import Charts, require_plotting
from neuronxa_ray.report.model import Report, Scope, Section, cache_alignment, resolve_scope, view_names

log = logging.getLogger(__name__)

RAW_VIEWS = ("runs", "benchmarks", "matches", "similarity", "sentence_states", "neuron_counts", "attempts")

Step = tuple[str, Callable[[], Any], tuple[str, ...]]  # section name, how to make it, the views it needs


def _steps(con, charts: Charts, scope: Scope, views: set[str]) -> list[Step]:
    return [
        ("layers", lambda: sections.layers_sections(con, charts, scope), ("alignment", "alignment_summary")),
        ("matrix", lambda: sections.matrix_section(con, charts, scope, views), ("alignment_summary",)),
        ("training", lambda: sections.training_section(con, charts, scope, views), ("training_curve",)),
        ("retrieval", lambda: sections.retrieval_section(con, charts, scope), ("retrieval",)),
        ("correlation", lambda: sections.correlation_section(con, charts, scope), ("correlation", "benchmark_pairs")),
        ("neurons", lambda: sections.neurons_section(con, charts, scope, views), ("language_specific_neurons",)),
        ("interventions", lambda: sections.interventions_section(con, charts, scope), ("intervention_matrix",)),
        ("runs", lambda: sections.runs_section(con, charts, scope), ("runs",)),
    ]


def _run_steps(steps: list[Step], views: set[str], missing: list[str]) -> list[Section]:
    """The sections made; a skipped or failed one, and an empty one's notes, appended to `missing`."""
    made_sections: list[Section] = []
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
                made_sections.append(sec)
                missing.extend(f"{sec.title}: {n}" for n in sec.notes if sec.figures == [] and not sec.tables)
    return made_sections


def build_report(
    lake: str | Path, models: Sequence[str] | None = None, checkpoints: Sequence[str] | None = None
) -> Report:
    """Query the lake's views and build every section's figures (Vega-Lite specs); nothing is written."""
    alt, _ = require_plotting()
    from neuronxa_ray.lake import Lake
    from neuronxa_ray.query import connect

    root = Lake(lake)  # a directory or an object-store URI
    if not root.exists():
        raise NeuronxaError(f"lake {root.uri!r} does not exist (run a job first, or pass --lake DIR)")
    con = connect(root)
    con.execute("SET enable_progress_bar = false")  # DuckDB's bar would print into logs and CI output
    views = view_names(con)
    scope = resolve_scope(con, models, checkpoints)
    cache_alignment(con, scope)
    charts = Charts(alt)
    missing: list[str] = []
    if not scope.models:
        missing.append("No alignment scores: the lake has no per-sentence matches (`matches`); run a job first.")
    made = _run_steps(_steps(con, charts, scope, views), views, missing)
    if not any(s.id == "correlation" for s in made):
        log.info("no benchmarks in the lake: no correlation section")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return Report(root.uri, created, made, missing, charts.datasets)
