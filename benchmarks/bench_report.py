"""Report at scale: a synthetic lake of many checkpoints x languages, written by the project's own writers.

    python -m benchmarks.bench_report [--checkpoints 50] [--languages 100] [--sentences 10] [--layers 12]

Writes per-sentence matches (matches_table, from random cosine matrices, as the worker does), neuron counters
(neuron_counts_table), completion markers and one runs row per checkpoint with the Lake (no sentence states: the
report does not read them), times `neuronxa-ray report`, prints the HTML
size, and with a `chromium` on PATH the time until every figure of the page is drawn (headless, --dump-dom).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neuronxa_ray.compute.matching import match_stats
from neuronxa_ray.lake import SCHEMAS, Lake, matches_table, neuron_counts_table

METHODS = ("nas", "nav", "hidden", "hidden_last")


def synthetic_lake(
    root: Path,
    n_checkpoints: int,
    n_languages: int,
    n_sentences: int,
    n_layers: int,
    d_ff: int = 64,
    seed: int = 0,
    first: int = 0,
    total: int | None = None,
) -> Path:
    """Scores rise with the step and fall with a per-language difficulty, so every figure has structure.
    first/total: write checkpoints first .. first + n_checkpoints - 1 of a run of total (to grow a lake in steps)."""
    rng = np.random.default_rng(seed + first)
    lake = Lake(root)
    model = "synthetic/model"
    langs = [f"l{i:03d}" for i in range(n_languages)]
    difficulty = rng.uniform(0.0, 1.0, n_languages)
    eye = np.eye(n_sentences)
    difficulty = np.random.default_rng(seed).uniform(0.0, 1.0, n_languages)  # the same for every step
    for c in range(first, first + n_checkpoints):
        ckpt, step = f"step-{(c + 1) * 1000:06d}", (c + 1) * 1000
        progress = (c + 1) / (total or n_checkpoints)
        for li, lang in enumerate(langs):
            layer_shape = np.sin(np.linspace(0.2, np.pi - 0.2, n_layers))[:, None, None]
            mats = {}
            for mi, method in enumerate(METHODS):
                signal = progress * (1.0 - difficulty[li]) * layer_shape * (0.5 + 0.15 * mi)
                noise = rng.normal(0.0, 0.25, size=(n_layers, n_sentences, n_sentences))
                mats[method] = np.clip(noise + signal * eye, -1, 1)
            stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}
            found = lake.write(
                "matches",
                matches_table(model, ckpt, "eng", lang, stats),
                lake.language_file("matches", model, ckpt, lang, "eng"),
            )
            n_tokens = 500
            active = rng.binomial(n_tokens, rng.uniform(0.05, 0.6, size=(n_layers, d_ff))).astype(float)
            counts = lake.write(
                "neuron_counts",
                neuron_counts_table(model, ckpt, lang, active, active * 0.7, n_tokens),
                lake.language_file("neuron_counts", model, ckpt, lang),
            )
            info = {"checkpoint_fingerprint": ckpt, "n_sentences": n_sentences}
            lake.mark_done(model, ckpt, "eng", lang, f"{ckpt}-{lang}", info, [found, counts])
        lake.mark_done(model, ckpt, "eng", "eng", f"{ckpt}-eng", {"checkpoint_fingerprint": ckpt}, [])
        row = {f.name: None for f in SCHEMAS["runs"]}
        row.update(
            run_id=f"synthetic-{ckpt}",
            model=model,
            checkpoint=ckpt,
            step=step,
            pivot_lang="eng",
            languages=langs,
            n_languages=n_languages,
            n_languages_computed=n_languages,
            n_sentences=n_sentences,
            n_layers=n_layers,
            d_ff=d_ff,
            hook_site="act",
            device="cpu",
            started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=c),
            finished_at=dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.timezone.utc) + dt.timedelta(hours=c),
            wall_s=1800.0,
            sentences_per_s=n_languages * n_sentences / 1800.0,
            code_version="synthetic",
            schema_version="2",
            config_json="{}",
        )
        lake.write_run(row)
    return root


def browser_load_seconds(page: Path, browser: str) -> float:
    """Wall time for headless chromium to load the page and run every vegaEmbed (until --dump-dom returns)."""
    start = time.perf_counter()
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    figures = out.stdout.count("data-figure=")
    drawn = out.stdout.count('data-rendered="true"')
    ms = re.search(r'data-figures-ms="(\d+)"', out.stdout)
    print(f"browser: {drawn}/{figures} figures drawn, {ms.group(1) if ms else '?'} ms after navigation start")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoints", type=int, default=50)
    ap.add_argument("--languages", type=int, default=100)
    ap.add_argument("--sentences", type=int, default=10)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--keep", help="write the lake and report here instead of a temporary directory")
    args = ap.parse_args()
    from neuronxa_ray.report import write_report

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="report-bench-"))
    try:
        lake = work / "lake"
        if not lake.exists():
            t = time.perf_counter()
            synthetic_lake(lake, args.checkpoints, args.languages, args.sentences, args.layers)
            print(f"lake written in {time.perf_counter() - t:.1f}s")
        page = work / "report.html"
        t = time.perf_counter()
        report = write_report(lake, page)
        print(
            f"report: {time.perf_counter() - t:.1f}s, {len(report.figures)} figures, "
            f"{page.stat().st_size / 1e6:.2f} MB HTML ({args.checkpoints} checkpoints x {args.languages} languages)"
        )
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if browser:
            print(f"browser load (headless {Path(browser).name}): {browser_load_seconds(page, browser):.1f}s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
