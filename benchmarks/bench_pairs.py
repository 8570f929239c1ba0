"""Every language pair on a real model: Gemma 3 270M x every language of the bundled UDHR sample x 50 sentences.

One run extracts each language once (forward passes, the job's pivot's matches on the device, the lake); then
compute_pairs turns the stored states into every (pivot, language) pair's matches. Ratio in one run:
(forward passes + pairs) / forward passes, goal <= 1.2. Also checks, on the real model, that the pair computation
from stored states reproduces the device's English row exactly (every stored match value and hit).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from benchmarks.common import GEMMA, report, save


def main(argv: list[str] | None = None) -> list[dict]:
    import numpy as np
    import torch

    from neuronxa_ray.compute.matching import matches_of
    from neuronxa_ray.config import job_from_dict
    from neuronxa_ray.corpus.readers import BUNDLED_UDHR, read_directory
    from neuronxa_ray.execution import RunOptions, run_jobs
    from neuronxa_ray.execution.pairs import compute_pairs
    from neuronxa_ray.lake import Lake
    from neuronxa_ray.query import connect

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--languages", type=int, default=0, help="first N languages (default: all)")
    args = ap.parse_args(argv)
    langs = read_directory(BUNDLED_UDHR).languages
    if args.languages:
        langs = ["eng", *[x for x in langs if x != "eng"][: args.languages - 1]]
    lake = Path(tempfile.mkdtemp(prefix="bench-pairs-")) / "lake"
    job = job_from_dict(
        {
            "model": GEMMA,
            "name": "gemma",
            "data": {"path": "bundled:udhr"},
            "languages": langs,
            "n_sentences": args.n,
            "lake": str(lake),
            "state_dtype": "float32",  # stored as computed: the device's matches are then recomputed exactly
        }
    )
    t0 = time.perf_counter()
    rep = run_jobs([job], RunOptions(progress=False))
    run_s = time.perf_counter() - t0
    forward_s = sum(r["extract_s"] for r in rep.runs)  # forward passes + on-device reductions, summed over actors
    t0 = time.perf_counter()
    rows = compute_pairs(Lake(lake), "gemma", "main", ["eng", *[x for x in langs if x != "eng"]], "all")
    pairs_s = time.perf_counter() - t0
    n_pairs = len(langs) * (len(langs) - 1)
    print(
        f"  {len(langs)} languages x {args.n} sentences: run {run_s:.1f}s (forward passes {forward_s:.1f}s), "
        f"{n_pairs - (len(langs) - 1)} more pairs from stored states in {pairs_s:.1f}s ({rows:,} match rows)",
        flush=True,
    )
    # the English row, recomputed from stored states, against the device's matches: exactly equal
    lk = Lake(lake)
    eng = lk.read_states("gemma", "main", "eng")
    con = connect(lake)
    checked = 0
    for lang in [x for x in langs if x != "eng"][:5]:
        other = lk.read_states("gemma", "main", lang)
        again = {m: matches_of(torch.from_numpy(eng[m]), torch.from_numpy(other[m])) for m in eng}
        stored = con.execute(
            "SELECT method, layer, sentence, diagonal, row_hit, column_hit FROM matches"
            " WHERE pivot_lang = 'eng' AND lang = ? ORDER BY ALL",
            [lang],
        ).fetchall()
        for method, layer, i, diagonal, row_hit, column_hit in stored:
            m = again[method]
            d = m["diagonal"][layer, i]
            assert (diagonal is None and np.isnan(d)) or diagonal == d, (lang, method, layer, i)
            assert (row_hit, column_hit) == (bool(m["row_hit"][layer, i]), bool(m["column_hit"][layer, i]))
            checked += 1
    matrix = con.execute("SELECT count(DISTINCT (pivot_lang, lang)) FROM alignment_matrix").fetchone()[0]
    print(f"  English row recomputed from stored states: {checked} match rows equal; matrix holds {matrix} pairs")
    results = [
        report(
            "every pair: (forward passes + pairs) / forward passes",
            (forward_s + pairs_s) / forward_s,
            1.2,
            "x",
            higher_is_better=False,
        )
    ]
    save(
        "pairs",
        {
            "results": results,
            "run_s": run_s,
            "forward_s": forward_s,
            "pairs_s": pairs_s,
            "languages": len(langs),
            "pairs": matrix,
            "eng_rows_checked": checked,
        },
    )
    return results


if __name__ == "__main__":
    main()
