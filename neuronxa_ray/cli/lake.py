"""`neuronxa-ray lake check` (verify every marker and file; --repair deletes what is broken, stale or orphaned) and
`neuronxa-ray lake compact` (merge complete checkpoints' small files).
"""

from __future__ import annotations

import sys

from neuronxa_ray.cli.args import check_lake, lake_arg, lake_dir


def add_parsers(sub) -> None:
    """The lake subcommand: check, compact."""
    lake = sub.add_parser("lake", help="maintain the lake")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    check = lake_sub.add_parser("check", help="list broken, stale and orphaned files (exit 1 if any remain)")
    lake_arg(check)
    check.add_argument("--repair", action="store_true", help="delete them, so a rerun recomputes exactly those")
    compact = lake_sub.add_parser(
        "compact", help="merge each complete checkpoint's per-language matches and neuron_counts into one file each"
    )
    lake_arg(compact)
    compact.add_argument("--model", help="only this model (default: all)")
    compact.add_argument("--checkpoint", help="only this checkpoint (default: all complete ones)")


LOST_LANGUAGE = ("broken", "stale", "legacy")  # a marker's problems: its repair removes a language


def cmd_lake(args) -> int:
    """lake check [--repair]: exit 0 when the lake is clean, 1 when problems remain. lake compact."""
    from neuronxa_ray.lake import Lake

    lake = Lake(lake_dir(args))
    check_lake(lake.uri)
    if args.lake_command == "compact":
        from neuronxa_ray.lake.compaction import compact
        from neuronxa_ray.query.connect import derived_tables

        done = compact(lake, args.model, args.checkpoint, derived=derived_tables())
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
        # a removed marker (broken, stale, legacy) is a language to compute again; the rest is housekeeping
        lost = any(p.kind in LOST_LANGUAGE and p.path.startswith("_done/") for p in problems)
        rerun = "; rerun the job to recompute" if lost else ""
        print(f"repaired {len(problems) - len(remaining)} problem(s){rerun}", file=sys.stderr)
        problems = remaining
        for p in problems:
            print(f"still: {p}")
    print(f"lake {lake.uri}: {len(problems) or 'no'} problem(s)", file=sys.stderr)
    return 1 if problems else 0
