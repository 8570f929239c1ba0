"""Writing stored states: one language's sentence_states (a 1B-shaped model: 22 blocks x 5,632 neurons, 23 hidden
states x 2,048, 200 sentences of random sparse activations) written to Parquet, before (float32, the writer's default
options: a dictionary and statistics on every column) and after (float16, no dictionary or statistics on the list of
floats), with one and two writer threads; measured side by side in one run. Raw bytes per second count the states
in the stored precision.

    python -m benchmarks.bench_writes [--sentences N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq

from benchmarks.common import report, save
from neuronxa_ray import lake as lake_module
from neuronxa_ray.lake import Lake, states_table, table_schema


def _states(n: int, rng) -> dict[str, np.ndarray]:
    sparse = (rng.random((n, 22, 5632)) < 0.3) * rng.random((n, 22, 5632))
    return {
        "nas": sparse.astype(np.float32),
        "nav": (sparse * 0.1).astype(np.float32),
        "hidden": rng.standard_normal((n, 23, 2048)).astype(np.float32),
        "hidden_last": rng.standard_normal((n, 23, 2048)).astype(np.float32),
    }


def _write(lake: Lake, states, dtype: str, writers: int, old_options: bool) -> float:
    """Seconds for `writers` languages written at once."""
    n = next(iter(states.values())).shape[0]
    tables = [
        states_table("m", "main", f"l{k}", [str(i) for i in range(n)], [30] * n, states, dtype) for k in range(writers)
    ]

    def one(k):
        path = lake.language_file("sentence_states", "m", "main", f"l{k}")
        if old_options:  # what lake.write did before: zstd, every column with a dictionary and statistics
            import pyarrow as pa

            data = pa.table(tables[k], schema=table_schema("sentence_states", dtype))
            rel = lake.storage.relative(path)
            lake.storage.write_with(
                rel, lambda out: pq.write_table(data, out, compression="zstd", row_group_size=65536)
            )
        else:
            lake.write("sentence_states", tables[k], path, state_dtype=dtype)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(one, range(writers)))
    return time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sentences", type=int, default=200)
    args = ap.parse_args(argv)
    states = _states(args.sentences, np.random.default_rng(0))
    raw32 = sum(a.size for a in states.values()) * 4
    assert "sentence_states" in lake_module.WRITE_OPTIONS
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        for _rep in range(2):  # A B A B: the machine's noise falls on both
            for name, dtype, old in (("before", "float32", True), ("after", "float16", False)):
                for writers in (1, 2):
                    raw = raw32 // (1 if dtype == "float32" else 2) * writers
                    rates.setdefault((name, writers), []).append(raw / _write(lake, states, dtype, writers, old) / 1e6)
    best = {k: max(v) for k, v in rates.items()}
    print(f"sentence_states of {args.sentences} sentences, {raw32 / 1e6:.0f} MB as float32:")
    for (name, writers), mbps in sorted(best.items()):
        print(f"  {name:<6} {writers} writer(s): {mbps:7.1f} MB/s of raw states")
    results = [
        report("after / before, 1 writer (raw MB/s)", best[("after", 1)] / best[("before", 1)], 1.5),
        report("after, 2 writers / 1 writer", best[("after", 2)] / best[("after", 1)], 1.3),
    ]
    save("writes", {"mb_per_s": {f"{k[0]}-{k[1]}": v for k, v in best.items()}, "results": results})
    return results


if __name__ == "__main__":
    main()
