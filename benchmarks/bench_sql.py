"""SQL views at scale: alignment_summary, retrieval and correlation over `matches` (O(n) rows per language, method
and layer) against the cell-based path over `similarity` (O(n^2) cells) that the views used before.

Synthetic lakes written by the project's writers (states_table is not needed: the views read matches): 130
method-layers as for a 7B model (nas/nav 32 blocks, hidden/hidden_last 33 states), at 50 languages x 100 sentences
and at 20 languages x 1,012 sentences (FLORES). The per-sentence results come from real cosine matrices of random
states (match_stats, as the worker computes them) for two template languages, reused for the others: query cost
does not depend on the values. The cell-based baseline needs `similarity`: written for every language of the
small lake and for 2 languages of the FLORES lake (its old query needs ~40 s and 2.3 GB there). DuckDB runs on 2
threads; goal: each view <= 2 s.

Bootstrap intervals (sql/25_intervals.sql): 200 languages x 1,012 sentences (FLORES-200) x Gemma 3 270M's 74
method-layers, every layer-mean score with its 95% interval from 1,000 resamples, timed through the CLI
(`neuronxa-ray sql`, process start included) next to alignment_summary; goal <= 2 s.

    python -m benchmarks.bench_sql                     (about 5 minutes on 2 cores)
    python -m benchmarks.bench_sql --intervals-only    (the intervals alone, about 1.5 minutes)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from benchmarks.common import report, save
from neuronxa_ray.compute.matching import cosine_matrices, match_stats
from neuronxa_ray.lake import Lake, matches_table, similarity_table
from neuronxa_ray.query import connect

LAYERS = {"nas": 32, "nav": 32, "hidden": 33, "hidden_last": 33}  # 130 method-layers
MODEL, CKPT, PIVOT = "synthetic-7b", "main", "eng"
GOAL_S = 2.0
NEW = {  # view -> query over matches
    "alignment_summary": "SELECT * FROM alignment_summary",
    "retrieval": "SELECT * FROM retrieval",
    "correlation": "SELECT * FROM correlation",
}
OLD = {  # the same answers from the stored cells, with the view definitions used before matches existed
    "alignment_summary": "SELECT * FROM before_alignment_summary",
    "retrieval": "SELECT * FROM before_retrieval",
    "correlation": "SELECT * FROM before_correlation",
}
# Verbatim the previous `retrieval` and `alignment_summary` views, over the cell-based mutual_nn / alignment.
BEFORE_SQL = """
CREATE OR REPLACE TEMP VIEW before_retrieval AS
WITH directions AS (
    SELECT model, checkpoint, method, pivot_lang, lang, layer, 'pivot_to_lang' AS direction, row_hit AS hit
    FROM mutual_nn_from_cells
    UNION ALL
    SELECT model, checkpoint, method, pivot_lang, lang, layer, 'lang_to_pivot' AS direction, column_hit AS hit
    FROM mutual_nn_from_cells
)
SELECT
    model, checkpoint, method, pivot_lang, lang, CAST(layer AS INTEGER) AS layer, direction,
    avg(CASE WHEN hit THEN 1.0 ELSE 0.0 END) AS accuracy
FROM directions
GROUP BY ALL;

CREATE OR REPLACE TEMP VIEW before_alignment_summary AS
WITH per_language AS (
    SELECT
        model, checkpoint, method, pivot_lang, lang,
        avg(score) AS score_mean,
        max(score) AS score_max,
        CAST(count(*) AS INTEGER) AS n_layers,
        max(n_sentences) AS n_sentences
    FROM alignment_from_cells
    GROUP BY ALL
)
SELECT
    s.model, s.checkpoint, s.method, s.pivot_lang, s.lang, s.score_mean, s.score_max,
    (SELECT min(a.layer) FROM alignment_from_cells AS a
      WHERE a.model = s.model AND a.checkpoint = s.checkpoint AND a.method = s.method
        AND a.pivot_lang = s.pivot_lang AND a.lang = s.lang AND a.score = s.score_max) AS best_layer,
    s.n_layers, s.n_sentences
FROM per_language AS s;

CREATE OR REPLACE TEMP VIEW before_correlation AS
WITH pairs AS (
    SELECT s.model, s.checkpoint, s.method, s.pivot_lang, b.benchmark, s.lang, s.score_mean AS score, b.value
    FROM before_alignment_summary AS s
    JOIN benchmarks AS b
      ON b.lang = s.lang
     AND (b.model IS NULL OR b.model = s.model)
     AND (b.checkpoint IS NULL OR b.checkpoint = s.checkpoint)
),
ranked AS (
    SELECT
        *,
        (rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY score)
         + count(*) OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark)
         - rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY score DESC) + 1) / 2.0
            AS score_rank,
        (rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY value)
         + count(*) OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark)
         - rank() OVER (PARTITION BY model, checkpoint, method, pivot_lang, benchmark ORDER BY value DESC) + 1) / 2.0
            AS value_rank
    FROM pairs
)
SELECT
    model, checkpoint, method, pivot_lang, benchmark,
    CAST(count(*) AS INTEGER) AS n_languages,
    corr(score, value) AS pearson,
    corr(score_rank, value_rank) AS spearman
FROM ranked
GROUP BY ALL;
"""


def _matrices(
    rng: np.random.Generator, n: int, noise: float, method_layers: dict[str, int] = LAYERS
) -> dict[str, np.ndarray]:
    """method -> [layers, n, n] float64 cosines of random 32-dim states with parallel partners."""
    out = {}
    for method, layers in method_layers.items():
        p = torch.from_numpy(rng.normal(size=(n, layers, 32)).astype(np.float32))
        x = p + noise * torch.from_numpy(rng.normal(size=(n, layers, 32)).astype(np.float32))
        out[method] = cosine_matrices(p, x).numpy()
    return out


def _lang(k: int) -> str:
    return f"l{k:03d}"


def build(
    root: Path, n_langs: int, n: int, similarity_langs: int, seed: int = 0, method_layers: dict[str, int] = LAYERS
) -> dict:
    """Write matches for n_langs languages (and similarity for the first similarity_langs); return byte counts."""
    rng = np.random.default_rng(seed)
    lake = Lake(root)
    templates = []
    for noise in (1.2, 2.0):
        mats = _matrices(rng, n, noise, method_layers)
        stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}
        templates.append((mats, stats))
    for k in range(n_langs):
        lang = _lang(k)
        mats, stats = templates[k % 2]
        written = lake.write(
            "matches",
            matches_table(MODEL, CKPT, PIVOT, lang, stats),
            lake.language_file("matches", MODEL, CKPT, lang, PIVOT),
        )
        files = [written]
        if k < similarity_langs:
            path = lake.language_file("similarity", MODEL, CKPT, lang, PIVOT)
            files.append(lake.write("similarity", similarity_table(MODEL, CKPT, PIVOT, lang, mats), path))
        # the completion marker the worker writes last: views read only languages whose marker verifies
        lake.mark_done(MODEL, CKPT, PIVOT, lang, f"fp-{lang}", {"checkpoint_fingerprint": "fp"}, files)
    lake.mark_done(MODEL, CKPT, PIVOT, PIVOT, "fp-pivot", {"checkpoint_fingerprint": "fp"}, [])
    values = rng.uniform(20, 90, size=n_langs)
    lake.write_benchmarks(
        "xnli",
        pa.table({"benchmark": ["xnli"] * n_langs, "lang": [_lang(k) for k in range(n_langs)], "value": values}),
    )
    total_layers = sum(method_layers.values())
    size = {t: sum((root / f).stat().st_size for f in lake.files(t)) for t in ("matches", "similarity")}
    return {
        "matches_bytes_per_lang_method_layer": size["matches"] / (n_langs * total_layers),
        "similarity_bytes_per_lang_method_layer": size["similarity"] / max(similarity_langs * total_layers, 1),
        "bytes": size,
    }


def _connect(root: Path):
    con = connect(root)
    con.execute("SET threads = 2")
    con.execute(BEFORE_SQL)
    return con


def _time(con, query: str, reps: int) -> tuple[float, list]:
    best, rows = float("inf"), []
    for _ in range(reps):
        t0 = time.perf_counter()
        rows = con.execute(query).fetchall()
        best = min(best, time.perf_counter() - t0)
    return best, sorted(rows, key=repr)


def _same(a: list, b: list) -> bool:
    """Equal rows; floats within 1e-12 (a layer mean may sum in another order)."""
    return len(a) == len(b) and all(
        len(x) == len(y)
        and all(u == v or (isinstance(u, float) and isinstance(v, float) and abs(u - v) <= 1e-12) for u, v in zip(x, y))
        for x, y in zip(a, b)
    )


def run_case(label: str, n_langs: int, n: int, similarity_langs: int, old_views: tuple[str, ...]) -> tuple[list, dict]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-sql-{n}-"))
    try:
        t0 = time.perf_counter()
        sizes = build(root, n_langs, n, similarity_langs)
        print(
            f"{label} x 130 method-layers, built in {time.perf_counter() - t0:.0f}s;"
            f" bytes per (language, method, layer): matches {sizes['matches_bytes_per_lang_method_layer']:,.0f},"
            f" similarity {sizes['similarity_bytes_per_lang_method_layer']:,.0f}",
            flush=True,
        )
        con = _connect(root)
        results, figures = [], {"sizes": sizes, "new_s": {}, "old_s": {}, "new_subset_s": {}, "same_answers": {}}
        answers = {}
        for view, query in NEW.items():
            seconds, answers[view] = _time(con, query, reps=3)
            figures["new_s"][view] = seconds
            rows = len(answers[view])
            results.append(report(f"{label}: {view} (matches, {rows} rows) seconds", seconds, GOAL_S, "s", False))
        subset = [_lang(k) for k in range(similarity_langs)]
        if similarity_langs < n_langs:  # the old path covers only these languages: compare on them too
            filt = f" WHERE lang IN ({', '.join(repr(x) for x in subset)})"
            for view in old_views:
                seconds, answers[view] = _time(con, NEW[view] + (filt if view != "correlation" else ""), reps=3)
                figures["new_subset_s"][view] = seconds
                print(f"    {view} (matches, the {len(subset)} languages of the old path): {seconds:.3f}s", flush=True)
        for view in old_views:
            seconds, rows = _time(con, OLD[view], reps=1)
            figures["old_s"][view] = seconds
            width = len(rows[0]) if rows else 0  # correlation now adds p-values and intervals: compare the old columns
            new_rows = sorted((r[:width] for r in answers[view]), key=repr)
            same = _same(rows, new_rows) if view != "correlation" or similarity_langs == n_langs else None
            figures["same_answers"][view] = same
            print(
                f"    {view} (cells, {len(rows)} rows, {len(subset)} languages): {seconds:.2f}s before;"
                f" same answers as matches: {same}",
                flush=True,
            )
        return results, figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


GEMMA_LAYERS = {"nas": 18, "nav": 18, "hidden": 19, "hidden_last": 19}  # Gemma 3 270M: 74 method-layers
INTERVAL_QUERIES = {  # through the CLI, as a user runs them; SELECT 1 = process start and connect alone
    "connect only (SELECT 1)": "SELECT 1",
    "alignment_summary": "SELECT * FROM alignment_summary",
    "alignment_interval": "SELECT * FROM alignment_interval",
    "language_mean_interval": "SELECT * FROM language_mean_interval_at()",
}


def _cli_seconds(root: Path, query: str, reps: int) -> tuple[float, float]:
    """Best wall time of `neuronxa-ray sql` (process start, connect, query, CSV out; DuckDB on the machine's cores)
    and the CPU seconds (user + system) of that run: on a shared machine the CPU time is the steadier figure."""
    import resource

    cli = Path(sys.executable).parent / "neuronxa-ray"
    best, cpu = float("inf"), float("nan")
    for _ in range(reps):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(
            [str(cli), "sql", "--lake", str(root), "--format", "csv", "-o", str(root / "out.csv"), query],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if wall < best:
            best = wall
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return best, cpu


def run_intervals(label: str, n_langs: int, n: int, method_layers: dict[str, int], reps: int = 3) -> tuple:
    """Bootstrap intervals (1,000 resamples) of every layer-mean score through the CLI; goal <= 2 s."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-intervals-{n_langs}-"))
    try:
        t0 = time.perf_counter()
        build(root, n_langs, n, 0, method_layers=method_layers)
        total = sum(method_layers.values())
        print(f"{label} x {total} method-layers, built in {time.perf_counter() - t0:.0f}s", flush=True)
        figures, results = {"cli_s": {}, "cli_cpu_s": {}, "query_s": {}}, []
        con = _connect(root)
        for view, query in INTERVAL_QUERIES.items():
            figures["query_s"][view], _ = _time(con, query, reps)
            figures["cli_s"][view], figures["cli_cpu_s"][view] = _cli_seconds(root, query, reps)
            print(
                f"    {view}: {figures['cli_s'][view]:.2f}s through the CLI ({figures['cli_cpu_s'][view]:.2f} CPU-s),"
                f" {figures['query_s'][view]:.2f}s the query alone in a connected session",
                flush=True,
            )
        seconds = figures["cli_s"]["alignment_interval"]
        results.append(report(f"{label}: alignment_interval via CLI seconds", seconds, GOAL_S, "s", False))
        return results, figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-baseline", action="store_true", help="skip the cell-based path (the slow part)")
    parser.add_argument(
        "--intervals-only", action="store_true", help="only the bootstrap intervals, 200 languages x 1,012 sentences"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    results, payload = [], {}
    res, payload["intervals_200x1012_gemma"] = run_intervals("200 langs x 1012 (Gemma 3 270M)", 200, 1012, GEMMA_LAYERS)
    results += res
    if args.intervals_only:
        save("sql_intervals", {**payload, "results": results})
        return results
    small_old = () if args.no_baseline else ("alignment_summary", "retrieval", "correlation")
    res, payload["50x100"] = run_case("50 langs x 100", 50, 100, 0 if args.no_baseline else 50, small_old)
    results += res
    big_old = () if args.no_baseline else ("alignment_summary",)
    res, payload["20x1012"] = run_case("20 langs x 1012", 20, 1012, 0 if args.no_baseline else 2, big_old)
    results += res
    print(f"  ({time.perf_counter() - t0:.0f}s)")
    save("sql", {**payload, "results": results})
    return results


if __name__ == "__main__":
    main()
