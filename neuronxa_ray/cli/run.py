"""`neuronxa-ray run` (job files on one actor pool, then the score table) and `neuronxa-ray watch` (a training
run's checkpoints as they appear, as a service: exit 1 naming what is missing, 143 on SIGTERM).
"""

from __future__ import annotations

import sys

from neuronxa_ray.cli.args import codes, job_overrides, seconds
from neuronxa_ray.cli.query import print_interventions, print_scores
from neuronxa_ray.methods import METHODS, label


def add_parsers(sub) -> None:
    """The run and watch subcommands."""
    run = sub.add_parser("run", help="run job files on one actor pool: extract states into the lake, print scores")
    run.add_argument("jobs", nargs="+", metavar="JOB.yaml", help="job YAML file(s); they share one actor pool")
    job_overrides(run)
    run.add_argument("--force", action="store_true", help="recompute every language, even if complete")
    run.add_argument("--recompute", type=codes, action="extend", metavar="L1,L2", help="recompute these languages")
    run.add_argument("--no-scores", action="store_true", help="do not print the score table afterwards")
    no_compact(run)

    watch = sub.add_parser("watch", help="evaluate a training run's checkpoints as they appear")
    watch.add_argument("job", metavar="JOB.yaml", help="job whose checkpoints are a list or {glob: PATTERN}")
    job_overrides(watch)
    watch.add_argument("--interval", type=seconds(0, True), default=30.0, help="seconds between polls (default 30)")
    watch.add_argument(
        "--settle",
        type=seconds(0, False),
        default=60.0,
        help="a checkpoint counts once unchanged this many seconds (60)",
    )
    watch.add_argument("--until-step", type=int, help="stop once a checkpoint at or past this step is done")
    no_compact(watch)


def no_compact(parser) -> None:
    parser.add_argument(
        "--no-compact",
        action="store_true",
        help="leave the checkpoints this run completed uncompacted (default: compact each, as `lake compact`)",
    )


def compact_completed(jobs: list, report, args) -> None:
    """Compact each (model, checkpoint) of the jobs that the run computed and left complete (none of its units
    failed, its lake answering); a failure to compact is a warning, never a failed run."""
    if getattr(args, "no_compact", False):
        return
    from neuronxa_ray.lake import Lake
    from neuronxa_ray.lake.compaction import compact_after_run
    from neuronxa_ray.query.connect import derived_tables

    failed = {(f.model, f.checkpoint) for f in report.failed}
    computed = {(row["model"], row["checkpoint"]) for row in report.runs}
    for job in jobs:
        lake = Lake(job.lake)
        if lake.uri in report.lakes_down:
            continue
        ours = (job.model_name, *(i.model_name(job.model_name) for i in job.interventions))
        keys = [k for k in computed - failed if k[0] in ours]
        compact_after_run(lake, keys, derived_tables())


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
    compact_completed(jobs, report, args)
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
        from neuronxa_ray.lake import Lake
        from neuronxa_ray.query import connect

        for job in jobs:
            if Lake(job.lake).uri in report.lakes_down:  # reading it would wait out its client's retries
                print(f"scores not shown: lake {job.lake} stopped answering during the run", file=sys.stderr)
                continue
            try:
                con = connect(job.lake)
                print_scores(con, model=job.model_name, pivot=job.pivot)
                if job.interventions:
                    print_interventions(con, model=job.model_name)
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
    from neuronxa_ray.execution.watch import missing, validate, watch

    (job,) = _load_jobs([args.job], args)
    validate(job)  # a job mistake now, not when the first checkpoint arrives
    options = RunOptions(progress=False if args.no_progress else None)

    def report(job, checkpoints) -> None:
        from neuronxa_ray.query import connect

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
            cells = "  ".join(f"{label(m)} {scores[m]:.3f}" for m in METHODS if m in scores)
            print(f"step {step if step is not None else '-'}  {checkpoint}: {cells}", flush=True)

    def run(sub) -> None:
        result = run_jobs([sub], options)
        compact_completed([sub], result, args)
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
