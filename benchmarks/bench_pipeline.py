"""The pipeline end to end (`run_jobs`: tokenizing, Ray actors, hooks, device cosine, Parquet writes, then the
SQL scores) against the bare base-model forward over the same sentences and batches. Start-up (Ray, model load)
is reported apart. Goal: warm pipeline throughput >= 0.80 of bare."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_hooks import bare_forward
from benchmarks.common import GEMMA, TEN_LANGS, report, save, udhr
from neuronxa_ray.compute.extraction import StateExtractor
from neuronxa_ray.config import job_from_dict
from neuronxa_ray.execution import RunOptions, run_jobs
from neuronxa_ray.model.load import load_model
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.query import connect


def run_pipeline(lake: Path, langs: list[str], n: int, model: str = GEMMA, **extra) -> dict:
    """One job run plus the SQL that computes every score; returns its timings and the runs row."""
    job = job_from_dict(
        {
            "model": model,
            "name": "bench",
            "data": {"path": "bundled:udhr"},
            "pivot": langs[0],
            "languages": langs[1:],
            "n_sentences": n,
            "lake": str(lake),
            "device": "cpu",
            **extra,
        }
    )
    t0 = time.perf_counter()
    report = run_jobs([job], RunOptions(progress=False))
    assert report.ok, report.failed
    row = report.runs[0]
    t1 = time.perf_counter()
    con = connect(lake)
    n_scores = con.execute("SELECT count(*) FROM alignment_summary").fetchone()[0]
    scoring_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0
    return {
        "row": row,
        "total_s": total_s,
        "scoring_s": scoring_s,
        "n_scores": n_scores,
        "warm_s": row["wall_s"] - row["startup_s"] + scoring_s,
        "startup_s": row["startup_s"],
    }


def main(argv=None, lake_dir: Path | None = None) -> tuple[list[dict], dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--languages", nargs="+", default=TEN_LANGS)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args(argv)
    lake = lake_dir or Path(tempfile.mkdtemp(prefix="bench-lake-"))
    texts = udhr(args.languages, args.n)

    lm = load_model(ModelSpec(model=GEMMA))
    torch.set_num_threads(2)
    ex = StateExtractor(lm, batch_size=16)
    bares = [bare_forward(lm, ex.tokenize(t), 16) for t in texts.values()]  # per language, as the actor batches

    def bare():
        t0 = time.perf_counter()
        for run in bares:
            run()
        return time.perf_counter() - t0

    b1 = bare()  # the hook benchmark before this one has warmed the process
    pipe = run_pipeline(lake, args.languages, args.n)
    b2 = bare()
    bare_s = (b1 + b2) / 2
    n_sent = sum(len(t) for t in texts.values())
    print(f"pipeline: {len(texts)} languages x {args.n} sentences ({n_sent}), Gemma 3 270M, CPU")
    print(
        f"  start-up (Ray + model load) {pipe['startup_s']:.1f}s, warm pipeline {pipe['warm_s']:.1f}s "
        f"(of which SQL scoring {pipe['scoring_s']:.2f}s), bare forward {bare_s:.1f}s (runs {b1:.1f}s, {b2:.1f}s)"
    )
    results = [report("warm pipeline / bare forward throughput", bare_s / pipe["warm_s"], 0.80)]
    save("pipeline", {"bare_s": [b1, b2], "pipeline": pipe, "results": results})
    return results, pipe


if __name__ == "__main__":
    main()
