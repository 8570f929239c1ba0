"""The `neuronxa-ray` command: run jobs, query the lake with SQL, print score tables."""

from __future__ import annotations

import argparse
import difflib
import logging
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("neuronxa_ray")

METHOD_ORDER = ("nas", "nav", "hidden", "hidden_last")
METHOD_LABELS = {"nas": "NASCA", "nav": "NAVCA", "hidden": "MEXA", "hidden_last": "MEXA-last"}
HIDDEN_METHODS = ("hidden", "hidden_last")  # their `layer` indexes hidden_states: 0 = embeddings, i+1 = block i
EMBEDDINGS = -1  # the block column's value for the embeddings (hidden_states[0])


def block_of(method: str, layer: int) -> int:
    """The transformer block a per-layer score belongs to: FFN methods' layer i is block i; hidden-state methods'
    layer i + 1 is the output of block i, their layer 0 the embeddings (EMBEDDINGS)."""
    return layer - 1 if method in HIDDEN_METHODS else layer


def _lake_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=None, help="lake directory or URI (s3://, gs://, az://; default ./lake)")


def _codes(text: str) -> list[str]:
    """A comma-separated list of language codes (one option value, so it cannot swallow the job file)."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected language codes such as fra,deu")
    return codes


def _seconds(minimum: float, strict: bool):
    """An argparse type: a number of seconds > minimum (strict) or >= minimum."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if value != value or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'>' if strict else '>='} {minimum:g} seconds")
        return value

    return parse


def _name(text: str) -> str:
    """A non-empty name (an empty --model would be stored as a model no score has)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the option out instead)")
    return text


def _job_overrides(p: argparse.ArgumentParser) -> None:
    _lake_arg(p)
    p.add_argument(
        "--languages", type=_codes, action="extend", metavar="L1,L2", help="override the job's languages (fra,deu)"
    )
    p.add_argument("--n-sentences", type=int, help="override the job's n_sentences")
    p.add_argument("--num-actors", type=int, help="override the number of extractor actors")
    p.add_argument("--batch-size", type=int, help="override the batch size (sentences)")
    p.add_argument("--device", help="override the device (auto, cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neuronxa-ray", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log each unit, and show tracebacks of errors")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run job files on one actor pool: extract states into the lake, print scores")
    run.add_argument("jobs", nargs="+", metavar="JOB.yaml", help="job YAML file(s); they share one actor pool")
    _job_overrides(run)
    run.add_argument("--force", action="store_true", help="recompute every language, even if complete")
    run.add_argument("--recompute", type=_codes, action="extend", metavar="L1,L2", help="recompute these languages")
    run.add_argument("--no-scores", action="store_true", help="do not print the score table afterwards")

    watch = sub.add_parser("watch", help="evaluate a training run's checkpoints as they appear")
    watch.add_argument("job", metavar="JOB.yaml", help="job whose checkpoints are a list or {glob: PATTERN}")
    _job_overrides(watch)
    watch.add_argument("--interval", type=_seconds(0, True), default=30.0, help="seconds between polls (default 30)")
    watch.add_argument(
        "--settle",
        type=_seconds(0, False),
        default=60.0,
        help="a checkpoint counts once unchanged this many seconds (60)",
    )
    watch.add_argument("--until-step", type=int, help="stop once a checkpoint at or past this step is done")

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

    imp = sub.add_parser(
        "import-benchmarks", help="add downstream results (CSV/TSV/Parquet, lm-eval JSON) for correlations"
    )
    _lake_arg(imp)
    imp.add_argument(
        "file",
        help="table with columns benchmark, lang, value (optional model, checkpoint), or an lm-evaluation-harness "
        "results*.json, or a directory searched for them",
    )
    imp.add_argument(
        "--name",
        type=_name,
        help="name of the stored file (default: the input's stem, made distinct from other imports)",
    )
    imp.add_argument("--metric", help="lm-eval metric (acc_norm, or a key such as exact_match,flexible-extract)")
    imp.add_argument(
        "--model", type=_name, help="model the results belong to (default: any; @results: lm-eval's own name)"
    )
    imp.add_argument(
        "--checkpoint", type=_name, help="checkpoint they belong to (default: any; @results: lm-eval's revision)"
    )
    imp.add_argument(
        "--replace",
        action="store_true",
        help="new values win over stored ones for the same benchmark, language, model and checkpoint (reported)",
    )

    lake = sub.add_parser("lake", help="maintain the lake")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    check = lake_sub.add_parser("check", help="list broken, stale and orphaned files (exit 1 if any remain)")
    _lake_arg(check)
    check.add_argument("--repair", action="store_true", help="delete them, so a rerun recomputes exactly those")
    compact = lake_sub.add_parser(
        "compact", help="merge each complete checkpoint's per-language matches and neuron_counts into one file each"
    )
    _lake_arg(compact)
    compact.add_argument("--model", help="only this model (default: all)")
    compact.add_argument("--checkpoint", help="only this checkpoint (default: all complete ones)")

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
    # Without a terminal there is no progress bar: per-unit log lines take its place.
    quiet = sys.stderr.isatty() and not args.verbose
    logging.getLogger("neuronxa_ray").setLevel(logging.WARNING if quiet else logging.INFO)
    from neuronxa_ray.errors import NeuronxaError, Terminated, raise_terminated

    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None  # unwinds as Ctrl-C does
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except Terminated:
        print("neuronxa-ray: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("neuronxa-ray: interrupted", file=sys.stderr)
        return 130
    except (NeuronxaError, ImportError) as e:  # the user's to fix: one line (-v: with the traceback)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"neuronxa-ray: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:
        if on_sigterm is not None:  # main() called from Python (tests): the caller's handler back
            signal.signal(signal.SIGTERM, on_sigterm)


def _load_jobs(paths: list[str], args) -> list:
    from neuronxa_ray.config import load_job

    overrides = {
        "languages": args.languages,
        "n_sentences": args.n_sentences,
        "num_actors": args.num_actors,
        "batch_size": args.batch_size,
        "device": args.device,
        "lake": args.lake,
    }
    return [load_job(path, overrides) for path in paths]


def cmd_run(args) -> int:
    from neuronxa_ray.execution import RunOptions, run_jobs

    jobs = _load_jobs(args.jobs, args)
    options = RunOptions(progress=False if args.no_progress else None, force=args.force, recompute=args.recompute)
    report = run_jobs(jobs, options)
    for row in report.runs:
        print(
            f"{row['model']} @ {row['checkpoint']}: {row['n_languages_computed']} languages x {row['n_sentences']} "
            f"sentences on {row['device']} ({row['dtype']}) in {row['wall_s']:.1f}s "
            f"(start-up {row['startup_s']:.1f}s, {row['sentences_per_s']:.1f} sentences/s after)",
            file=sys.stderr,
        )
    if report.n_units:
        print(f"{report.n_units} unit(s), {report.loads} model load(s), {report.wall_s:.1f}s", file=sys.stderr)
    else:
        print("nothing to do: every language is already in the lake", file=sys.stderr)
    if not args.no_scores:
        from neuronxa_ray.sql import connect

        for job in jobs:
            try:
                print_scores(connect(job.lake), model=job.model_name, pivot=job.pivot)
            except Exception as e:  # e.g. the lake stopped answering: the failed units below are what matters
                if not report.failed:
                    raise
                print(f"scores not shown: {' '.join(str(e).split())[:200]}", file=sys.stderr)
    if report.failed:
        print(f"\n{len(report.failed)} unit(s) failed (a rerun computes only what is missing):", file=sys.stderr)
        rows = [("model", "checkpoint", "lang", "attempts", "error")]
        rows += [(f.model, f.checkpoint, f.lang, str(f.attempts), f.error) for f in report.failed]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4], file=sys.stderr)
        return 1
    return 0


def cmd_watch(args) -> int:
    """watch: exits 0 when it stopped at --until-step with every checkpoint up to it evaluated, 1 when some are
    still missing (listed), 130 on Ctrl-C and 143 on SIGTERM (the lake resumable either way)."""
    from neuronxa_ray.errors import NeuronxaError
    from neuronxa_ray.execution import RunOptions, run_jobs
    from neuronxa_ray.watch import missing, validate, watch

    (job,) = _load_jobs([args.job], args)
    validate(job)  # a job mistake now, not when the first checkpoint arrives
    options = RunOptions(progress=False if args.no_progress else None)

    def report(job, checkpoints) -> None:
        from neuronxa_ray.sql import connect

        names = [c.name for c in checkpoints]
        rows = (
            connect(job.lake)
            .execute(
                "SELECT checkpoint, step, method, score_mean FROM training_curve WHERE model = ? AND lang = '*' "
                "AND pivot_lang = ? AND list_contains(?, checkpoint) ORDER BY step NULLS LAST, checkpoint, method",
                [job.model_name, job.pivot, names],
            )
            .fetchall()
        )
        by_ckpt: dict = {}
        for checkpoint, step, method, score in rows:
            by_ckpt.setdefault((step, checkpoint), {})[method] = score
        for (step, checkpoint), scores in by_ckpt.items():
            cells = "  ".join(f"{METHOD_LABELS.get(m, m)} {scores[m]:.3f}" for m in METHOD_ORDER if m in scores)
            print(f"step {step if step is not None else '-'}  {checkpoint}: {cells}", flush=True)

    def run(sub) -> None:
        result = run_jobs([sub], options)
        for failed in result.failed:
            print(f"failed: {failed.checkpoint} {failed.lang}: {failed.error}", file=sys.stderr)
        if result.failed:  # watch retries the checkpoint once its files change
            raise NeuronxaError(f"{len(result.failed)} unit(s) of {sub.checkpoints[0].name} failed")

    state = watch(job, run, report, args.interval, args.settle, args.until_step)
    print(f"watched {len(state.evaluated)} checkpoint(s)", file=sys.stderr)
    lacking = missing(job, state, args.until_step)
    for name, why in lacking:
        print(f"still missing: {name}: {why}", file=sys.stderr)
    return 1 if lacking else 0


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
        methods = [x for x in METHOD_ORDER if any(x in v for v in cells.values())]
        head = ["lang", *(["block"] if per_layer else []), *(METHOD_LABELS[x] for x in methods)]
        print(
            f"\n{m} @ {c}, pivot {p}: {'per-layer' if per_layer else 'mean over layers'} alignment score",
            file=out,
        )
        if per_layer:
            ffn = [METHOD_LABELS[x] for x in methods if x not in HIDDEN_METHODS]
            hidden = [METHOD_LABELS[x] for x in methods if x in HIDDEN_METHODS]
            parts = []
            if ffn:
                parts.append(f"{'/'.join(ffn)}: FFN neurons inside block i")
            if hidden:
                parts.append(f"{'/'.join(hidden)}: hidden state after block i (layer i+1; 'embeddings' = layer 0)")
            print(f"block i: {'; '.join(parts)}; '-': the method has no such layer", file=out)
        lines = [head]
        for cell in sorted(cells):
            label = [cell[0], "embeddings" if cell[1] == EMBEDDINGS else str(cell[1])] if per_layer else list(cell)
            values = [cells[cell].get(x) for x in methods]
            lines.append([*label, *("-" if v is None else f"{v:.3f}" for v in values)])
        if not per_layer:
            means = [sum(cells[cell].get(x, 0.0) for cell in cells) / len(cells) for x in methods]
            lines.append(["mean", *(f"{v:.3f}" for v in means)])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        for line in lines:
            print("  ".join(v.rjust(w) for v, w in zip(line, widths)), file=out)


def _explain_no_scores(con, model, checkpoint, pivot, out) -> None:
    """Say which filter matched nothing (a typo in --model is not an empty lake)."""
    have = con.execute("SELECT DISTINCT model, checkpoint, pivot_lang FROM alignment_summary").fetchall()
    if not have:
        print("no scores in the lake yet (run a job first)", file=out)
        return
    from neuronxa_ray.errors import NeuronxaError

    for name, value, index in (("model", model, 0), ("checkpoint", checkpoint, 1), ("pivot", pivot, 2)):
        values = sorted({row[index] for row in have})
        if value is not None and value not in values:
            hint = difflib.get_close_matches(value, values, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise NeuronxaError(f"no {name} {value!r} in the lake{extra} (it has {values[:20]})")
    print("no scores match these filters together", file=out)


def _check_output(path: str, flag: str, directory: bool = False, example: str = "out") -> None:
    """An output path the command can write, before any work: a file (or, for `directory`, a folder) whose
    nearest existing parent is a folder."""
    from neuronxa_ray.errors import NeuronxaError

    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise NeuronxaError(f"{flag} {path!r} is a file, not a directory (name a directory to write figures into)")
    if not directory and p.is_dir():
        raise NeuronxaError(f"{flag} {path!r} is a directory: name a file to write (such as {str(p / example)!r})")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NeuronxaError(f"{flag} {path!r}: {str(parent)!r} is a file, not a directory")
            break


def _lake_dir(args) -> str:
    return args.lake or "lake"


def _check_lake(path: str) -> None:
    from neuronxa_ray.errors import NeuronxaError
    from neuronxa_ray.lake import Lake

    lake = Lake(path)
    if lake.storage.is_local and Path(lake.uri).is_file():
        raise NeuronxaError(f"lake {path!r} is a file, not a lake directory (pass --lake DIR)")
    if not lake.exists():
        raise NeuronxaError(f"lake {path!r} does not exist (run a job first, or pass --lake DIR)")


def cmd_sql(args) -> int:
    from neuronxa_ray.errors import NeuronxaError
    from neuronxa_ray.sql import connect

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
        _check_output(args.output, "-o")
    lake = _lake_dir(args)
    _check_lake(lake)
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
    from neuronxa_ray.sql import connect

    lake = _lake_dir(args)
    _check_lake(lake)
    print_scores(connect(lake), args.model, args.checkpoint, args.pivot, args.per_layer)
    return 0


def cmd_import_benchmarks(args) -> int:
    from neuronxa_ray.benchmarks import import_benchmarks

    done = import_benchmarks(
        _lake_dir(args), args.file, args.name, args.metric, args.model, args.checkpoint, replace=args.replace
    )
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{done.table.num_rows} rows -> {done.uri}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from neuronxa_ray.report import write_report

    lake = _lake_dir(args)
    _check_lake(lake)
    _check_output(args.output, "-o", example="report.html")
    if args.figures:
        _check_output(args.figures, "--figures", directory=True)
    report = write_report(lake, args.output, args.model, args.checkpoint, args.figures, args.figure_format)
    for line in report.missing:
        print(f"note: {line}", file=sys.stderr)
    print(f"{len(report.figures)} figures in {len(report.sections)} sections -> {args.output}", file=sys.stderr)
    return 0


def cmd_lake(args) -> int:
    """lake check [--repair]: exit 0 when the lake is clean, 1 when problems remain. lake compact."""
    from neuronxa_ray.lake import Lake

    lake = Lake(_lake_dir(args))
    _check_lake(lake.uri)
    if args.lake_command == "compact":
        from neuronxa_ray.lake.compaction import compact

        done = compact(lake, args.model, args.checkpoint)
        for label, (before, after) in done.compacted.items():
            print(f"compacted {label}: {before} files -> {after}")
        for label, why in done.skipped.items():
            print(f"skipped   {label}: {why}")
        print(f"lake {lake.uri}: {len(done.compacted)} checkpoint(s) compacted", file=sys.stderr)
        return 0
    problems = lake.check(repair=False)
    for p in problems:
        print(p)
    if args.repair and problems:
        remaining = lake.check(repair=True)
        print(f"repaired {len(problems) - len(remaining)} problem(s); rerun the job to recompute", file=sys.stderr)
        problems = remaining
        for p in problems:
            print(f"still: {p}")
    print(f"lake {lake.uri}: {len(problems) or 'no'} problem(s)", file=sys.stderr)
    return 1 if problems else 0


COMMANDS = {
    "run": cmd_run,
    "watch": cmd_watch,
    "sql": cmd_sql,
    "scores": cmd_scores,
    "import-benchmarks": cmd_import_benchmarks,
    "lake": cmd_lake,
    "report": cmd_report,
}

if __name__ == "__main__":
    sys.exit(main())
