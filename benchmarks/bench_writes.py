"""Writing stored states: one language's sentence_states (a 1B-shaped model: 22 blocks x 5,632 neurons, 23 hidden
states x 2,048, 200 sentences of random sparse activations) written to Parquet with the writer's options before
(a dictionary and statistics on every column; float32, the old default, and float16) and after (no dictionary or
statistics on the list of floats; float16, the new default), with one and two writer threads; measured side by side
in one run, interleaved. The cost of a list column is per element, so rates are in million state values a second.

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
    elements = sum(a.size for a in states.values())
    configs = (
        ("before, float32", "float32", True),
        ("before, float16", "float16", True),
        ("after, float16", "float16", False),
    )
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        for _rep in range(3):  # A B C A B C: the machine's noise falls on all of them
            for name, dtype, old in configs:
                for writers in (1, 2):
                    seconds = _write(lake, states, dtype, writers, old)
                    rates.setdefault((name, writers), []).append(elements * writers / seconds / 1e6)
    best = {k: max(v) for k, v in rates.items()}
    print(
        f"sentence_states of {args.sentences} sentences ({elements / 1e6:.0f} M values, {raw32 / 1e6:.0f} MB float32):"
    )
    for (name, writers), rate in best.items():
        print(f"  {name:<16} {writers} writer(s): {rate:6.1f} M values/s")
    results = [
        report("after / before, float16, 1 writer", best[("after, float16", 1)] / best[("before, float16", 1)], 1.5),
        report(
            "after float16 / before float32, 1 writer", best[("after, float16", 1)] / best[("before, float32", 1)], 1.0
        ),
        report("after, 2 writers / 1 writer", best[("after, float16", 2)] / best[("after, float16", 1)], 1.3),
    ]
    save("writes", {"m_values_per_s": {f"{k[0]}-{k[1]}": v for k, v in best.items()}, "results": results})
    return results


if __name__ == "__main__":
    main()
