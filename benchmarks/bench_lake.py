"""Lake size: bytes per sentence-layer of each table, the projection for a 7B model (32 layers, d_ff 11008,
d_model 4096) x 200 languages x 100 sentences, and the float16 state option (bytes and score change)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import report, save
from neuronxa_ray.lake import Lake
from neuronxa_ray.sql import connect

SEVEN_B = {"n_layers": 32, "d_ff": 11008, "d_model": 4096, "langs": 200, "n": 100}


def _bytes(lake: Path, table: str, langs: list[str] | None = None) -> int:
    files = Lake(lake).files(table)
    if langs is not None:
        files = [f for f in files if any(f"lang={lang}" in str(f) for lang in langs)]
    return sum(f.stat().st_size for f in files)


def measure(lake: Path) -> dict:
    row = connect(lake).execute("SELECT n_layers, d_ff, d_model, n_sentences, n_languages FROM runs").fetchone()
    L, d_ff, d_model, n, n_langs = row
    raw_states = n * n_langs * (L * 2 * d_ff + (L + 1) * 2 * d_model) * 4
    raw_sim = n * (n_langs - 1) * (2 * L + 2 * (L + 1)) * n * 8
    raw_counts = n_langs * L * d_ff * 8 * 3
    sizes = {t: _bytes(lake, t) for t in ("sentence_states", "similarity", "neuron_counts")}
    ratio = {
        "sentence_states": sizes["sentence_states"] / raw_states,
        "similarity": sizes["similarity"] / raw_sim,
        "neuron_counts": sizes["neuron_counts"] / raw_counts,
    }
    per_sl = {t: sizes[t] / (n * n_langs * L) for t in sizes}
    m = SEVEN_B
    proj = {
        "sentence_states": m["n"]
        * m["langs"]
        * (m["n_layers"] * 2 * m["d_ff"] + (m["n_layers"] + 1) * 2 * m["d_model"])
        * 4
        * ratio["sentence_states"],
        "similarity": m["n"] * (m["langs"] - 1) * (4 * m["n_layers"] + 2) * m["n"] * 8 * ratio["similarity"],
        "neuron_counts": m["langs"] * m["n_layers"] * m["d_ff"] * 24 * ratio["neuron_counts"],
    }
    return {
        "sizes": sizes,
        "compression": ratio,
        "bytes_per_sentence_layer": per_sl,
        "projection_7b": proj,
        "dims": {"n_layers": L, "d_ff": d_ff, "d_model": d_model, "n": n, "n_langs": n_langs},
    }


def main(lake: Path, langs: list[str], n: int) -> list[dict]:
    from benchmarks.bench_pipeline import run_pipeline

    m = measure(lake)
    d = m["dims"]
    print(
        f"lake size (Gemma 3 270M: {d['n_layers']} layers, d_ff {d['d_ff']}, "
        f"{d['n_langs']} languages x {d['n']} sentences)"
    )
    for t, b in m["bytes_per_sentence_layer"].items():
        mb, z = m["sizes"][t] / 1e6, m["compression"][t]
        print(f"  {t:<16} {mb:8.1f} MB  {b:9.0f} bytes per sentence-layer  (zstd: {z:.2f} of raw)")
    print("  projection, 7B model (32 layers, d_ff 11008) x 200 languages x 100 sentences:")
    for t, b in m["projection_7b"].items():
        print(f"    {t:<16} {b / 1e9:8.1f} GB")
    print(f"    {'total':<16} {sum(m['projection_7b'].values()) / 1e9:8.1f} GB")

    # float16 states: the same languages again, stored as float16
    f16 = Path(tempfile.mkdtemp(prefix="bench-lake16-"))
    run_pipeline(f16, langs, n, state_dtype="float16")
    b32, b16 = _bytes(lake, "sentence_states", langs), _bytes(f16, "sentence_states", langs)
    pivot, others = langs[0], langs[1:]
    q = """SELECT method, lang, layer, score FROM alignment_from_states WHERE pivot_lang = ? ORDER BY ALL"""
    s32 = connect(lake).execute(q, [pivot]).fetchall()
    s32 = [r for r in s32 if r[1] in others]
    s16 = connect(f16).execute(q, [pivot]).fetchall()
    diffs = np.array([abs(a[3] - b[3]) for a, b in zip(s32, s16, strict=True)])
    flips = float(np.rint(diffs.max() * n))  # score steps are 1/n: whole sentences
    dev = (
        connect(lake)
        .execute(
            "SELECT method, lang, layer, score FROM alignment WHERE lang IN (SELECT unnest(?)) ORDER BY ALL", [others]
        )
        .fetchall()
    )
    dev16 = connect(f16).execute("SELECT method, lang, layer, score FROM alignment ORDER BY ALL").fetchall()
    print(
        f"  float16 states: {b16 / 1e6:.1f} MB vs {b32 / 1e6:.1f} MB float32 for {len(langs)} languages "
        f"({b16 / b32:.2f}); scores recomputed from stored states differ in {int((diffs > 0).sum())} of {len(diffs)} "
        f"(language, method, layer) cells, at most {flips:.0f} sentence(s) of {n}; "
        f"device scores identical: {dev == dev16}"
    )
    results = [
        report("float16 / float32 sentence_states bytes", b16 / b32, 0.5, higher_is_better=False),
        report(
            "float16 score change, max sentences flipped per cell",
            flips,
            1.0,
            unit="",
            higher_is_better=False,
        ),
    ]
    save(
        "lake",
        {
            **m,
            "float16": {
                "bytes16": b16,
                "bytes32": b32,
                "cells": len(diffs),
                "changed": int((diffs > 0).sum()),
                "max_flips": flips,
                "device_scores_identical": dev == dev16,
            },
            "results": results,
        },
    )
    return results
