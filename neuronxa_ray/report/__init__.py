"""`neuronxa-ray report`: draws one self-contained HTML file from the lake's views (no CDN, no network).

Owns the report and nothing else. It may import `neuronxa_ray.errors`, `neuronxa_ray.methods`, the lake (to open
it) and the views' `connect`; nothing of execution, the worker, compute, Ray or torch. Its modules, each importing
only those above it: `model` (figures, sections, scope, the queries), `charts` (Altair builders), `tables` (HTML
cells), `sections` (one function per part of the page), `build` (runs the sections), `html` (the page and files).

Every number comes from the lake's SQL views: `alignment`, `alignment_summary`, `training_curve`, `retrieval`,
`correlation`, `language_specific_neurons`, `runs`, and the optional `alignment_matrix` / neuron-overlap views when
they exist. Aggregation happens in DuckDB, so the page embeds only small tables: per-layer detail for a few
checkpoints, layer means for the rest.

`alignment` is computed once per report: a temporary table of the same name, restricted to the chosen models and
checkpoints, shadows the view in this connection only, so `alignment_summary`, `training_curve` and `correlation`
read it instead of recomputing the mutual nearest neighbours over every cosine matrix.

Plotting library: Vega-Altair with vl-convert-python (the `report` extra). One declarative spec per figure gives
both the interactive chart in the page (hover tooltips, zoom/pan, a language picker) with the Vega JavaScript
bundle inlined from vl-convert, and PNG/SVG files for papers without a browser or Node. Both are maintained by the
Vega project; plotly + matplotlib would need two plotting code paths for the same figure.
"""

from neuronxa_ray.report.build import build_report
from neuronxa_ray.report.html import render_html, write_figures, write_report
from neuronxa_ray.report.model import Figure, Report, Section
from neuronxa_ray.report.tables import fmt

__all__ = ["Figure", "Report", "Section", "build_report", "fmt", "render_html", "write_figures", "write_report"]
