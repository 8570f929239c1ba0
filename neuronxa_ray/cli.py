"""The `neuronxa-ray` command: run jobs, query the lake with SQL, print score tables."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("neuronxa_ray")

METHOD_ORDER = ("nas", "nav", "hidden", "hidden_last")
METHOD_LABELS = {"nas": "NASCA", "nav": "NAVCA", "hidden": "MEXA", "hidden_last": "MEXA-last"}


def _lake_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=None, help="lake directory (default: the job's lake, else ./lake)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neuronxa-ray", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log each language and more")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job file: extract states into the lake, then print scores")
    run.add_argument("job", help="job YAML file")
    _lake_arg(run)
    run.add_argument("--languages", nargs="+", help="override the job's languages")
    run.add_argument("--n-sentences", type=int, help="override the job's n_sentences")
    run.add_argument("--num-actors", type=int, help="override the number of extractor actors")
    run.add_argument("--batch-size", type=int, help="override the batch size (sentences)")
    run.add_argument("--device", help="override the device (auto, cpu, cuda)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-scores", action="store_true", help="do not print the score table afterwards")

    sql = sub.add_parser("sql", help="run SQL over the lake's views")
    _lake_arg(sql)
    sql.add_argument("query", nargs="?", help="SQL text (or -f FILE)")
    sql.add_argument("-f", "--file", help="read the SQL from a file")
    sql.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    sql.add_argument("-o", "--output", help="write to this file (required for parquet)")

    scores = sub.add_parser("scores", help="print a language x method table of layer-mean scores")
    _lake_arg(scores)
    scores.add_argument("--model", help="only this model (default: all)")
    scores.add_argument("--checkpoint", help="only this checkpoint")
    scores.add_argument("--pivot", help="only this pivot")
    scores.add_argument("--per-layer", action="store_true", help="one row per language and layer")

    imp = sub.add_parser("import-benchmarks", help="add downstream results (CSV/TSV/Parquet) for correlations")
    _lake_arg(imp)
    imp.add_argument("file", help="table with columns benchmark, lang, value (optional model, checkpoint)")
    imp.add_argument("--name", help="name of the stored file (default: the input's stem)")

    rep = sub.add_parser("report", help="write a self-contained HTML report of the lake (needs the report extra)")
    _lake_arg(rep)
    rep.add_argument("--model", nargs="+", help="only these models (default: all)")
    rep.add_argument("--checkpoint", nargs="+", help="only these checkpoints (default: all)")
    rep.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    rep.add_argument("--figures", help="also write every figure as PNG and SVG files into this directory")
    rep.add_argument("--figure-format", nargs="+", choices=["png", "svg"], default=["png", "svg"])
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Without a terminal there is no progress bar: per-language log lines take its place.
    quiet = sys.stderr.isatty() and not args.verbose
    logging.getLogger("neuronxa_ray").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"neuronxa-ray: error: {e}", file=sys.stderr)
        return 2


def cmd_run(args) -> int:
    from neuronxa_ray.config import load_job
    from neuronxa_ray.execution import run_job

    overrides = {
        "languages": args.languages,
        "n_sentences": args.n_sentences,
        "num_actors": args.num_actors,
        "batch_size": args.batch_size,
        "device": args.device,
        "lake": args.lake,
    }
    job = load_job(args.job, overrides)
    runs = run_job(job, progress=False if args.no_progress else None)
    for row in runs:
        print(
            f"{row['model']} @ {row['checkpoint']}: {row['n_languages_computed']} languages x {row['n_sentences']} "
            f"sentences on {row['device']} ({row['dtype']}) in {row['wall_s']:.1f}s "
            f"(start-up {row['startup_s']:.1f}s, {row['sentences_per_s']:.1f} sentences/s after)",
            file=sys.stderr,
        )
    if not runs:
        print("nothing to do: every language is already in the lake", file=sys.stderr)
    if not args.no_scores:
        from neuronxa_ray.sql import connect

        con = connect(job.lake)
        print_scores(con, model=job.model_name, pivot=job.pivot)
    return 0


def _where(**filters) -> tuple[str, list]:
    parts, params = [], []
    for key, value in filters.items():
        if value is not None:
            parts.append(f'"{key}" = ?')
            params.append(value)
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def print_scores(con, model=None, checkpoint=None, pivot=None, per_layer=False, out=None) -> None:
    """Language x method table (layer-mean scores), one block per model/checkpoint/pivot."""
    out = out or sys.stdout
    where, params = _where(model=model, checkpoint=checkpoint, pivot_lang=pivot)
    view = "alignment" if per_layer else "alignment_summary"
    value = "score" if per_layer else "score_mean"
    extra = ", layer" if per_layer else ""
    rows = con.execute(
        f"SELECT model, checkpoint, pivot_lang, lang{extra}, method, {value} FROM {view}{where}", params
    ).fetchall()
    if not rows:
        print("no scores in the lake yet (run a job first)", file=out)
        return
    blocks: dict[tuple, dict[tuple, dict[str, float]]] = {}
    for row in rows:
        key, cell, method, score = row[:3], row[3:-2], row[-2], row[-1]
        blocks.setdefault(key, {}).setdefault(cell, {})[method] = score
    for (m, c, p), cells in sorted(blocks.items()):
        methods = [x for x in METHOD_ORDER if any(x in v for v in cells.values())]
        head = ["lang", *(["layer"] if per_layer else []), *(METHOD_LABELS[x] for x in methods)]
        print(
            f"\n{m} @ {c}, pivot {p}: {'per-layer' if per_layer else 'mean over layers'} alignment score",
            file=out,
        )
        lines = [head]
        for cell in sorted(cells):
            lines.append([*map(str, cell), *(f"{cells[cell].get(x, float('nan')):.3f}" for x in methods)])
        if not per_layer:
            means = [sum(cells[cell].get(x, 0.0) for cell in cells) / len(cells) for x in methods]
            lines.append(["mean", *(f"{v:.3f}" for v in means)])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        for line in lines:
            print("  ".join(v.rjust(w) for v, w in zip(line, widths)), file=out)


def _lake_dir(args) -> str:
    return args.lake or "lake"


def _check_lake(path: str) -> None:
    if not Path(path).is_dir():
        raise ValueError(f"lake {path!r} does not exist (run a job first, or pass --lake DIR)")


def cmd_sql(args) -> int:
    from neuronxa_ray.sql import connect

    if bool(args.query) == bool(args.file):
        raise ValueError("give either a SQL query or -f FILE")
    query = Path(args.file).read_text(encoding="utf-8") if args.file else args.query
    lake = _lake_dir(args)
    _check_lake(lake)
    con = connect(lake)
    try:
        rel = con.sql(query)
    except Exception as e:  # duckdb's errors name the view or column: pass them on
        raise ValueError(str(e).strip()) from e
    if rel is None:
        return 0
    if args.format == "parquet":
        if not args.output:
            raise ValueError("--format parquet needs -o FILE")
        rel.write_parquet(args.output)
        return 0
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "table":
            _print_table(rel.columns, rel.fetchall(), out)
        elif args.format == "csv":
            import csv

            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(rel.columns)
            writer.writerows(rel.fetchall())
        else:
            import json

            cols = rel.columns
            for row in rel.fetchall():
                out.write(json.dumps(dict(zip(cols, row)), default=str) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _print_table(columns: list[str], rows: list[tuple], out) -> None:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "NULL" if v is None else str(v)

    cells = [list(columns)] + [[fmt(v) for v in row] for row in rows]
    widths = [min(60, max(len(r[i]) for r in cells)) for i in range(len(columns))]
    for r in cells:
        print("  ".join(v[:60].ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)
    print(f"({len(rows)} rows)", file=out)


def cmd_scores(args) -> int:
    from neuronxa_ray.sql import connect

    lake = _lake_dir(args)
    _check_lake(lake)
    print_scores(connect(lake), args.model, args.checkpoint, args.pivot, args.per_layer)
    return 0


def cmd_import_benchmarks(args) -> int:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from neuronxa_ray.lake import SCHEMAS, Lake, slug

    src = Path(args.file)
    if not src.is_file():
        raise ValueError(f"benchmark file {str(src)!r} does not exist")
    if src.suffix == ".parquet":
        table = pq.read_table(src)
    else:
        delimiter = "\t" if src.suffix == ".tsv" else ","
        table = pcsv.read_csv(src, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    missing = {"benchmark", "lang", "value"} - set(table.column_names)
    if missing:
        raise ValueError(f"{src}: missing columns {sorted(missing)} (need benchmark, lang, value)")
    schema = SCHEMAS["benchmarks"]
    cols = {}
    for f in schema:
        if f.name in table.column_names:
            cols[f.name] = table.column(f.name).cast(f.type)
        else:
            cols[f.name] = pa.nulls(table.num_rows, f.type)
    lake = Lake(_lake_dir(args))
    name = slug(args.name or src.stem)
    path = lake.write("benchmarks", pa.table(cols, schema=schema), lake.root / "benchmarks" / f"{name}.parquet")
    print(f"{table.num_rows} rows -> {path}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from neuronxa_ray.report import write_report

    lake = _lake_dir(args)
    _check_lake(lake)
    report = write_report(lake, args.output, args.model, args.checkpoint, args.figures, args.figure_format)
    for line in report.missing:
        print(f"note: {line}", file=sys.stderr)
    print(f"{len(report.figures)} figures in {len(report.sections)} sections -> {args.output}", file=sys.stderr)
    return 0


COMMANDS = {"run": cmd_run, "sql": cmd_sql, "scores": cmd_scores, "import-benchmarks": cmd_import_benchmarks}
COMMANDS["report"] = cmd_report

if __name__ == "__main__":
    sys.exit(main())
