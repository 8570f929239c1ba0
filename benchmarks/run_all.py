"""`make bench`: every CPU benchmark, each ratio printed against its goal; results in .bench/*.json.

Pass MEXA_DIR=/path/to/a/clone/of/cisnlp/MEXA (outside this repo) to include the comparison with MEXA's code."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from benchmarks import (
    bench_hooks,
    bench_lake,
    bench_memory,
    bench_mexa,
    bench_pairs,
    bench_pipeline,
    bench_scheduler,
    bench_sql,
    bench_writes,
)
from benchmarks.common import TEN_LANGS, save


def main() -> None:
    import torch

    t0 = time.perf_counter()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}\n"
    )
    results = []
    print("[1/9] hook overhead")
    results += bench_hooks.main([])
    print("\n[2/9] pipeline vs bare forward")
    lake = Path(tempfile.mkdtemp(prefix="bench-lake-"))
    res, pipe = bench_pipeline.main([], lake_dir=lake)
    results += res
    print("\n[3/9] against MEXA's code")
    results += bench_mexa.main([], ours=pipe, lake=lake)
    print("\n[4/9] lake size")
    results += bench_lake.main(lake, TEN_LANGS[:4], 50)
    print("\n[5/9] memory, 10 vs 40 languages")
    results += bench_memory.main(n=5)
    print("\n[6/9] SQL views: matches vs cells, 50 x 100 and 20 x 1,012 sentences")
    results += bench_sql.main([])
    print("\n[7/9] scheduler: synthetic makespan and loads on a 4-node cluster; real tiny models vs the old loop")
    results += bench_scheduler.main([])
    print("\n[8/9] every language pair: Gemma 3 270M x 32 UDHR languages x 50 sentences")
    results += bench_pairs.main([])
    print("\n[9/9] stored states written to Parquet, before and after")
    results += bench_writes.main([])
    print(f"\nsummary ({time.perf_counter() - t0:.0f}s):")
    for r in results:
        verdict = "MET   " if r["met"] else "MISSED"
        print(f"  {verdict} {r['name']}: {r['value']:.3f}{r['unit']} (goal {r['goal']}{r['unit']})")
    save("summary", {"results": results, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
