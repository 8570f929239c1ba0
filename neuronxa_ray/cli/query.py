"""`neuronxa-ray sql` (any SQL over the lake's views, as a table, CSV, JSON or Parquet) and `neuronxa-ray scores`
(a language x method table of layer-mean scores, or per layer with its transformer block).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from neuronxa_ray.cli.args import check_lake, check_output, lake_arg, lake_dir
from neuronxa_ray.methods import EMBEDDINGS, HIDDEN_METHODS, METHODS, block_of, label


def add_parsers(sub) -> None:
    """The sql and scores subcommands."""
    sql = sub.add_parser("sql", help="run SQL over the lake's views")
    lake_arg(sql)
    sql.add_argument("query", nargs="?", help="SQL text (or -f FILE)")
    sql.add_argument("-f", "--file", help="read the SQL from a file")
    sql.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    sql.add_argument("-o", "--output", help="write to this file (required for parquet)")

    scores = sub.add_parser("scores", help="print a language x method table of layer-mean scores")
    lake_arg(scores)
    scores.add_argument("--model", help="only this model (default: all)")
    scores.add_argument("--checkpoint", help="only this checkpoint")
    scores.add_argument("--pivot", help="only this pivot")
    scores.add_argument("--per-layer", action="store_true", help="one row per language and layer")


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
        _explain_no_scores(con, model, checkpoint, pivot, out)
        return
    blocks: dict[tuple, dict[tuple, dict[str, float]]] = {}
    for row in rows:
        key, cell, method, score = row[:3], row[3:-2], row[-2], row[-1]
        if per_layer:  # one row per transformer block: FFN block i beside the hidden state after block i
            cell = (cell[0], block_of(method, cell[1]))
        blocks.setdefault(key, {}).setdefault(cell, {})[method] = score
    for (m, c, p), cells in sorted(blocks.items()):
        methods = [x for x in METHODS if any(x in v for v in cells.values())]
        head = ["lang", *(["block"] if per_layer else []), *(label(x) for x in methods)]
        print(
            f"\n{m} @ {c}, pivot {p}: {'per-layer' if per_layer else 'mean over layers'} alignment score",
            file=out,
        )
        if per_layer:
            print(_block_legend(methods), file=out)
        lines = [head]
        for cell in sorted(cells):
            row = [cell[0], "embeddings" if cell[1] == EMBEDDINGS else str(cell[1])] if per_layer else list(cell)
            values = [cells[cell].get(x) for x in methods]
            lines.append([*row, *("-" if v is None else f"{v:.3f}" for v in values)])
        if not per_layer:
            means = [sum(cells[cell].get(x, 0.0) for cell in cells) / len(cells) for x in methods]
            lines.append(["mean", *(f"{v:.3f}" for v in means)])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        for line in lines:
            print("  ".join(v.rjust(w) for v, w in zip(line, widths)), file=out)


def print_interventions(con, model=None, out=None) -> None:
    """Per checkpoint, the evaluated language x intervention table: perplexity ratio against `none` and the change
    of NASCA (the layer-mean score) under each intervention."""
    out = out or sys.stdout
    where, params = _where(model=model)
    rows = con.execute(
        f"SELECT model, checkpoint, intervention, lang, perplexity_ratio, delta_nasca FROM intervention_effect{where}",
        params,
    ).fetchall()
    blocks: dict[tuple, dict[str, dict[str, tuple]]] = {}
    for m, c, intervention, lang, ratio, delta in rows:
        blocks.setdefault((m, c), {}).setdefault(lang, {})[intervention] = (ratio, delta)
    for (m, c), cells in sorted(blocks.items()):
        names = sorted({i for v in cells.values() for i in v})
        print(f"\n{m} @ {c}: neurons switched off: perplexity / perplexity with none off (change of NASCA)", file=out)
        lines = [["lang", *names]]
        for lang in sorted(cells):
            values = [cells[lang].get(i) for i in names]
            lines.append(
                [lang]
                + ["-" if v is None else f"{v[0]:.3f}" + ("" if v[1] is None else f" ({v[1]:+.3f})") for v in values]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for line in lines:
            print("  ".join(v.rjust(w) for v, w in zip(line, widths)), file=out)


def _block_legend(methods: list[str]) -> str:
    """What block i means for each kind of method in a per-layer table."""
    ffn = [label(x) for x in methods if x not in HIDDEN_METHODS]
    hidden = [label(x) for x in methods if x in HIDDEN_METHODS]
    parts = []
    if ffn:
        parts.append(f"{'/'.join(ffn)}: FFN neurons inside block i")
    if hidden:
        parts.append(f"{'/'.join(hidden)}: hidden state after block i (layer i+1; 'embeddings' = layer 0)")
    return f"block i: {'; '.join(parts)}; '-': the method has no such layer"


def _explain_no_scores(con, model, checkpoint, pivot, out) -> None:
    """Say which filter matched nothing (a typo in --model is not an empty lake)."""
    have = con.execute("SELECT DISTINCT model, checkpoint, pivot_lang FROM alignment_summary").fetchall()
    if not have:
        print("no scores in the lake yet (run a job first)", file=out)
        return
    from neuronxa_ray.errors import no_such

    for name, value, index in (("model", model, 0), ("checkpoint", checkpoint, 1), ("pivot", pivot, 2)):
        values = {row[index] for row in have}
        if value is not None and value not in values:
            raise no_such(name, value, values, place=" in the lake")
    print("no scores match these filters together", file=out)


# What `sql` runs: queries, and statements on objects in the connection's memory. The rest can write files (COPY ...
# TO over a lake file replaced its rows; also EXPORT, ATTACH then CREATE, PREPARE/EXECUTE of a COPY, CALL, PRAGMA,
# INSTALL), so it is not run.
SQL_RUNS = (
    "SELECT", "EXPLAIN", "CREATE", "DROP", "INSERT", "UPDATE", "DELETE", "ALTER", "TRANSACTION", "ANALYZE", "SET",
    "VARIABLE_SET", "MULTI",  # MULTI: a PIVOT
)  # fmt: skip
# settings that make DuckDB write files where they name
SQL_SETTINGS_WRITING = {
    "profile_output", "profiling_output", "log_query_path", "temp_directory", "secret_directory", "home_directory",
    "extension_directory",
}  # fmt: skip


def refuse_file_writes(query: str) -> None:
    """`sql` reads the lake: a statement that could write files (possibly over the lake's own) is refused before
    any runs. Results are written with -o FILE. Tables and views a query creates live in memory and end with it."""
    import duckdb

    from neuronxa_ray.errors import NeuronxaError

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:  # a syntax error: the same message as running it
        raise NeuronxaError(str(e).strip()) from e
    for statement in statements:
        kind = statement.type.name
        setting = re.match(r"\s*(?:SET|RESET)\s+(?:(?:GLOBAL|SESSION|LOCAL)\s+)?(\w+)", statement.query, re.I)
        if kind not in SQL_RUNS or (kind == "SET" and setting and setting.group(1).lower() in SQL_SETTINGS_WRITING):
            what = f"SET {setting.group(1)}" if kind == "SET" and setting else f"{kind} statements"
            raise NeuronxaError(
                f"`sql` runs queries (SELECT, and CREATE/INSERT/... on tables in memory), not {what}: they can write "
                "files, the lake's own included. Write a query's result with -o FILE [--format csv|json|parquet]"
            )


def cmd_sql(args) -> int:
    from neuronxa_ray.errors import NeuronxaError
    from neuronxa_ray.query import connect

    if bool(args.query) == bool(args.file):
        raise NeuronxaError("give either a SQL query or -f FILE")
    if args.file:
        try:
            query = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise NeuronxaError(
                f"-f {args.file!r}: cannot read the SQL file ({getattr(e, 'strerror', None) or e})"
            ) from e
    else:
        query = args.query
    if args.output:
        check_output(args.output, "-o")
    refuse_file_writes(query)
    lake = lake_dir(args)
    check_lake(lake)
    con = connect(lake)
    try:
        rel = con.sql(query)
    except Exception as e:  # duckdb's errors name the view or column: pass them on
        from neuronxa_ray.errors import NeuronxaError

        raise NeuronxaError(str(e).strip()) from e
    if rel is None:
        return 0
    if args.format == "parquet":
        if not args.output:
            raise NeuronxaError("--format parquet needs -o FILE")
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
    from neuronxa_ray.query import connect

    lake = lake_dir(args)
    check_lake(lake)
    print_scores(connect(lake), args.model, args.checkpoint, args.pivot, args.per_layer)
    return 0
