"""The report's output: one self-contained HTML page (CSS, the Vega bundle inlined, every spec and table, no
network) and, when asked, each figure as PNG/SVG files rendered by vl-convert."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.report.build import build_report
from neuronxa_ray.report.charts import require_plotting
from neuronxa_ray.report.model import Report, Section

log = logging.getLogger(__name__)

SVG_MAX_ROWS = 3000  # larger figures draw on a canvas: faster in the browser, still printable

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


def _vl_version() -> str | None:
    """The Vega-Lite version Altair writes specs for (e.g. '6.4'), when vl-convert ships it; else its latest."""
    alt, vlc = require_plotting()
    version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return version if version in vlc.get_vegalite_versions() else None


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no '</' can close the tag early."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _section_html(sec: Section) -> list[str]:
    """A section's heading, intro, figures (each spec in a JSON script the page's embed code draws), tables, notes."""
    parts = [f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>']
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
    return parts


def render_html(report: Report) -> str:
    """The whole page: CSS, the Vega bundle (inlined, no network), every spec, and the tables."""
    _, vlc = require_plotting()
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
        parts.extend(_section_html(sec))
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
    _, vlc = require_plotting()
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
