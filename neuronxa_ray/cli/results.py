"""`neuronxa-ray import-benchmarks` (downstream results for correlations) and `neuronxa-ray report` (the HTML
report).
"""

from __future__ import annotations

import sys

from neuronxa_ray.cli.args import check_lake, check_output, lake_arg, lake_dir, name_arg


def add_parsers(sub) -> None:
    """The import-benchmarks and report subcommands."""
    imp = sub.add_parser(
        "import-benchmarks", help="add downstream results (CSV/TSV/Parquet, lm-eval JSON) for correlations"
    )
    lake_arg(imp)
    imp.add_argument(
        "file",
        help="table with columns benchmark, lang, value (optional model, checkpoint), or an lm-evaluation-harness "
        "results*.json, or a directory searched for them",
    )
    imp.add_argument(
        "--name",
        type=name_arg,
        help="name of the stored file (default: the input's stem, made distinct from other imports)",
    )
    imp.add_argument("--metric", help="lm-eval metric (acc_norm, or a key such as exact_match,flexible-extract)")
    imp.add_argument(
        "--model", type=name_arg, help="model the results belong to (default: any; @results: lm-eval's own name)"
    )
    imp.add_argument(
        "--checkpoint", type=name_arg, help="checkpoint they belong to (default: any; @results: lm-eval's revision)"
    )
    imp.add_argument(
        "--replace",
        action="store_true",
        help="new values win over stored ones for the same benchmark, language, model and checkpoint (reported)",
    )

    rep = sub.add_parser("report", help="write a self-contained HTML report of the lake (needs the report extra)")
    lake_arg(rep)
    rep.add_argument("--model", nargs="+", help="only these models (default: all)")
    rep.add_argument("--checkpoint", nargs="+", help="only these checkpoints (default: all)")
    rep.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    rep.add_argument("--figures", help="also write every figure as PNG and SVG files into this directory")
    rep.add_argument("--figure-format", nargs="+", choices=["png", "svg"], default=["png", "svg"])


def cmd_import_benchmarks(args) -> int:
    from neuronxa_ray.downstream.results import import_benchmarks

    done = import_benchmarks(
        lake_dir(args), args.file, args.name, args.metric, args.model, args.checkpoint, replace=args.replace
    )
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{done.table.num_rows} rows -> {done.uri}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from neuronxa_ray.report import write_report

    lake = lake_dir(args)
    check_lake(lake)
    check_output(args.output, "-o", example="report.html")
    if args.figures:
        check_output(args.figures, "--figures", directory=True)
    report = write_report(lake, args.output, args.model, args.checkpoint, args.figures, args.figure_format)
    for line in report.missing:
        print(f"note: {line}", file=sys.stderr)
    print(f"{len(report.figures)} figures in {len(report.sections)} sections -> {args.output}", file=sys.stderr)
    return 0
