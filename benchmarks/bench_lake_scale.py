"""A lake that keeps up with a training run: opening the lake and each score view through the CLI, as it grows.

    python -m benchmarks.bench_lake_scale [--checkpoints 100] [--languages 100] [--step 20] [--keep DIR]
                                          [--before-src DIR] [--compact-as-written] [--views-only]

Grows a synthetic lake (benchmarks.bench_report.synthetic_lake: the project's writers, markers and catalogue
entries; 10 sentences x 12 layers x 4 methods per language) `--step` checkpoints at a time, timing after each step
`neuronxa-ray sql "select count(*) from alignment_summary"` end to end (a fresh process: start-up, open, query),
and with --before-src (a checkout of the code before catalogues, e.g. `git archive c717355 | tar -x -C DIR`) the
same command with that code, which reads every marker. On the full lake, as written: each score view with both;
then `lake compact` (timed) and each view again, compacted. Peak memory from /usr/bin/time. --keep DIR writes the
lake there, and reuses it when it is there already. --compact-as-written compacts each step's checkpoints once
written (as `run` does at its end). After each step, and on the full lake: opening the lake in this process
(Lake.view_files: seconds, and how many files it read, counting every read of a file's bytes or footer).
--views-only [--repeat N]: only time opening and each view of the lake at --keep (wall and CPU seconds, peak
memory; with --before-src, that code and this alternately).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_report import synthetic_lake

VIEWS = {
    "alignment_summary": "select count(*) from alignment_summary",
    "alignment": "select count(*) from alignment",
    "retrieval": "select count(*) from retrieval",
    "matches": "select count(*) from matches",
    "training_curve": "select count(*) from training_curve",
    "one checkpoint": "select avg(score_mean) from alignment_summary where checkpoint = 'step-050000'",
}

BEFORE = ("alignment_summary", "alignment", "matches")  # the old code's figures (it takes ~40 s a query at 10,000)


def cli(lake: Path, query: str, src: str | None = None) -> tuple[float, float, str]:
    """(seconds, peak MiB, stdout) of `neuronxa-ray sql` in a fresh process; src: run another checkout's code."""
    seconds, _, peak, out = cli_cpu(lake, query, src)
    return seconds, peak, out


def cli_cpu(lake: Path, query: str, src: str | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds user + sys, peak MiB, stdout) of `neuronxa-ray sql` in a fresh process."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "neuronxa_ray.cli", "sql", "--lake", str(lake), "--format", "csv", query]
    if src:
        env["PYTHONPATH"] = src
        env["NEURONXA_RAY_SQL_DIR"] = str(Path(src) / "sql")
    timed = ["/usr/bin/time", "-f", "%U %S %M", *cmd] if Path("/usr/bin/time").exists() else cmd
    start = time.perf_counter()
    out = subprocess.run(timed, capture_output=True, text=True, env=env, cwd=src or None)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    if timed is cmd:
        return elapsed, float("nan"), float("nan"), out.stdout.strip().splitlines()[-1]
    user, system, peak = out.stderr.strip().splitlines()[-1].split()
    return elapsed, float(user) + float(system), float(peak) / 1024, out.stdout.strip().splitlines()[-1]


def opening(root: Path) -> tuple[float, int]:
    """(seconds, files read) of opening the lake for the views (Lake.view_files), in this process."""
    from neuronxa_ray.lake import Lake
    from neuronxa_ray.lake.storage import Storage

    reads = {"n": 0}
    originals = {name: getattr(Storage, name) for name in ("read_bytes", "open_input_file")}

    def counting(name):
        def read(self, *a, **k):
            reads["n"] += 1
            return originals[name](self, *a, **k)

        return read

    for name in originals:
        setattr(Storage, name, counting(name))
    try:
        start = time.perf_counter()
        Lake(root).view_files()
        return time.perf_counter() - start, reads["n"]
    finally:
        for name, fn in originals.items():
            setattr(Storage, name, fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--languages", type=int, default=100)
    ap.add_argument("--step", type=int, default=20)
    ap.add_argument("--keep", help="write (or reuse) the lake here")
    ap.add_argument("--before-src", help="a checkout of the code before catalogues, for the before figures")
    ap.add_argument("--compact-as-written", action="store_true", help="compact each step's checkpoints once written")
    ap.add_argument("--views-only", action="store_true", help="only time opening and the views of the lake at --keep")
    ap.add_argument("--repeat", type=int, default=1, help="--views-only: runs of each view (the minimum is shown)")
    args = ap.parse_args()
    from neuronxa_ray.lake.compaction import compact
    from neuronxa_ray.query.connect import derived_tables

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lake-scale-")) / "lake"
    units = args.checkpoints * args.languages
    print(f"lake {root}" + ("" if args.views_only else f": {args.checkpoints} checkpoints x {args.languages} "
                                                         f"languages = {units} units"))  # fmt: skip
    query = VIEWS["alignment_summary"]
    if args.views_only:  # each view with the code before (if given) and now, alternately, min of --repeat
        seconds, reads = opening(root)
        print(f"opening: {seconds:.2f} s, {reads} file(s) read")
        codes = {"before": args.before_src, "now": None} if args.before_src else {"now": None}
        for name, q in {**VIEWS, "select 1": "select 1"}.items():
            runs: dict[str, list] = {k: [] for k in codes}
            for _ in range(args.repeat):
                for k, src in codes.items():
                    runs[k].append(cli_cpu(root, q, src))
            cells = "   ".join(
                f"{k} {min(r[0] for r in v):6.2f} s (CPU {min(r[1] for r in v):5.2f} s) {min(r[2] for r in v):5.0f} MiB"
                for k, v in runs.items()
            )
            print(f"view  {name:<18} {cells}", flush=True)
        return
    if not (root / "_done").exists():
        print(f"{'checkpoints':>11} {'units':>6} {'write s':>8} {'compact s':>9} {'open s':>7} {'reads':>5} "
              f"{'sql, catalogue':>15} {'sql, before':>12}")  # fmt: skip
        for first in range(0, args.checkpoints, args.step):
            n = min(args.step, args.checkpoints - first)
            start = time.perf_counter()
            synthetic_lake(root, n, args.languages, 10, 12, first=first, total=args.checkpoints)
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            if args.compact_as_written:
                keys = [("synthetic/model", f"step-{(c + 1) * 1000:06d}") for c in range(first, first + n)]
                compact(root, keys=keys, vacuum_after_s=0, derived=derived_tables())  # as `run` does
            compact_s = time.perf_counter() - start
            open_s, reads = opening(root)
            now, _, _ = cli(root, query)
            before = f"{cli(root, query, args.before_src)[0]:>10.2f} s" if args.before_src else ""
            done = first + n
            print(f"{done:>11} {done * args.languages:>6} {write_s:>8.1f} {compact_s:>9.1f} {open_s:>7.2f} "
                  f"{reads:>5} {now:>13.2f} s {before}", flush=True)  # fmt: skip
    compacted = any(root.glob("matches/*/*/compacted-*.parquet"))
    if not compacted:
        for name, q in VIEWS.items():
            if args.before_src and name in BEFORE:
                t, mem, out = cli(root, q, args.before_src)
                print(f"before     {name:<18} {t:6.2f} s  {mem:6.0f} MiB  -> {out}", flush=True)
            t, mem, out = cli(root, q)
            print(f"catalogue  {name:<18} {t:6.2f} s  {mem:6.0f} MiB  -> {out}", flush=True)
        start = time.perf_counter()
        done = compact(root, derived=derived_tables())
        print(f"lake compact: {len(done.compacted)} checkpoints in {time.perf_counter() - start:.1f} s", flush=True)
    files = sum(1 for _ in root.rglob("*.parquet"))
    print(f"{files} Parquet files in the lake (superseded ones included until vacuumed)")
    seconds, reads = opening(root)
    print(f"opening: {seconds:.2f} s, {reads} file(s) read")
    for name, q in VIEWS.items():
        t, mem, out = cli(root, q)
        print(f"compacted  {name:<18} {t:6.2f} s  {mem:6.0f} MiB  -> {out}", flush=True)
    if not args.keep:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
