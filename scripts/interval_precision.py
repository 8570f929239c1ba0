"""How many sentences does a given precision need? Interval widths from a lake's own per-sentence hits.

For each method, the per-sentence layer-mean hit rates of every language in the lake (`sentence_hits`) are a pilot
sample. For each target number of sentences n, a run of n sentences is simulated by drawing n of them with
replacement (per language), and the 95% bootstrap interval of that run is computed exactly as the views do
(1,000 resamples); the table gives the mean half-width over languages and repetitions. Also prints the widths the
lake itself has (`alignment_interval`).

    python scripts/interval_precision.py --lake lake [--sizes 25,50,100,200,500,1012] [--repeats 50]
"""

from __future__ import annotations

import argparse

import numpy as np

from neuronxa_ray.methods import METHOD_LABELS, METHODS
from neuronxa_ray.query import connect
from neuronxa_ray.query.intervals import sentence_interval


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default="lake")
    parser.add_argument("--sizes", default="25,50,100,200,500,1012")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    con = connect(args.lake)
    rows = con.execute(
        """SELECT method, avg(score_mean), avg(score_ci_high - score_ci_low), min(score_ci_high - score_ci_low),
                  max(score_ci_high - score_ci_low), count(*), max(n_sentences)
           FROM alignment_interval GROUP BY method"""
    ).fetchall()
    order = {m: i for i, m in enumerate(METHODS)}
    print("Widths in the lake (95% interval, 1,000 resamples, seed 0), mean over languages [min, max]:")
    for method, score, width, lo, hi, n_langs, n in sorted(rows, key=lambda r: order.get(r[0], 9)):
        print(
            f"  {METHOD_LABELS.get(method, method):10} score {score:.3f}  width {width:.3f} [{lo:.3f}, {hi:.3f}]"
            f"  ({n_langs} languages, {n} sentences)"
        )
    hits = con.execute(
        """SELECT method, lang, max(n_layers), list(mutual_hits ORDER BY sentence)
           FROM sentence_hits GROUP BY method, lang"""
    ).fetchall()
    rng = np.random.default_rng(0)
    print("\nHalf-width of the 95% interval (+-) with n sentences, drawn from the lake's own sentences:")
    print("  " + "method".ljust(10) + "".join(f"n={n}".rjust(9) for n in sizes))
    for method in sorted({h[0] for h in hits}, key=lambda m: order.get(m, 9)):
        cells = []
        for n in sizes:
            widths = []
            for _, _, layers, per_sentence in (h for h in hits if h[0] == method):
                pilot = np.asarray(per_sentence)
                runs = pilot[rng.integers(0, len(pilot), size=(args.repeats, n))]
                _, low, high = sentence_interval(runs, layers, 0.95, 1000, 0)
                widths.append(np.mean(high - low) / 2)
            cells.append(f"{np.mean(widths):.3f}".rjust(9))
        print("  " + METHOD_LABELS.get(method, method).ljust(10) + "".join(cells))


if __name__ == "__main__":
    main()
