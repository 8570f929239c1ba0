"""The scheduler: makespan against its lower bound, model loads, and the per-checkpoint loop it replaced.

A. Synthetic: a local multi-node Ray cluster (ray.cluster_utils.Cluster: a head without CPUs and four 1-CPU nodes),
   12 checkpoints x 8 languages on 4 actors, a worker of known cost (a model load of LOAD_S seconds, languages of
   known seconds; sleeps, so it measures scheduling and not the CPU). Lower bound: every unit's cost spread over the
   actors, plus one load that nothing can hide (the first; prefetch hides the others). Goals: makespan <= 1.15 x the
   lower bound, loads <= checkpoints + actors.
B. Real tiny models: 6 checkpoints x 8 languages (bundled UDHR) on 2 actors, through the scheduler against the loop
   it replaced (one run per checkpoint, each starting its own actors and loading the model in each), same machine,
   same run. Ratio = loop wall time / scheduler wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.common import report, save, udhr

LOAD_S = 1.0
COSTS = {"eng": 0.30, "fra": 0.20, "deu": 0.25, "spa": 0.20, "ita": 0.35, "por": 0.20, "rus": 0.40, "cmn": 0.30}
LANGS = list(COSTS)


def _sleep_worker(load_s: float, costs: dict[str, float]):
    """A worker with the LanguageWorker interface whose load and languages take known times."""
    from neuronxa_ray.worker.worker import LanguageResult, WriteOutcome

    class SleepWorker:
        @staticmethod
        def prefetch(spec, settings):
            time.sleep(load_s)
            return "weights"

        def __init__(self, spec, settings, with_tokenizer=False, prefetched=None):
            if prefetched is None:
                time.sleep(load_s)
            self.pending = None
            self.write_s = 0.0  # the actor reports write seconds per language: none here

        def process(self, task, pivot=None, share_pivot=True):
            time.sleep(costs[task.lang])
            confirmed = self.collect()
            self.pending = WriteOutcome(task.model_name, task.checkpoint, task.lang)
            result = LanguageResult(task.lang, len(task.texts), 0, costs[task.lang], 0.0, 1, 1, 1, "cpu", "float32")
            result.confirmed = confirmed
            states = {"nas": [[0.0]]} if task.lang == task.pivot else None
            return result, states

        def has_pivot(self, task):
            return False

        def collect(self):
            done, self.pending = ([self.pending] if self.pending else []), None
            return done

        def close(self):
            pass

    return SleepWorker


def _checkpoints(root: Path, n: int, real: bool) -> list[str]:
    """n checkpoint directories: tiny random Llamas (real) or a config, a tokenizer and an empty weight file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import make_tokenizer, save_tiny

    out = []
    for step in range(1, n + 1):
        path = root / f"checkpoint-{step}"
        if real:
            save_tiny("llama", path, seed=step)
        else:
            path.mkdir(parents=True)
            (path / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 128}')
            (path / "model.safetensors").write_bytes(b"")
            make_tokenizer().save_pretrained(path)
        out.append(str(path))
    return out


def _data(root: Path, n: int) -> Path:
    data = root / "data"
    data.mkdir()
    for lang, lines in udhr(LANGS, n).items():
        (data / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


def _job(checkpoints: list[str], data: Path, lake: Path, num_actors: int, n: int):
    from neuronxa_ray.config import job_from_dict

    return job_from_dict(
        {
            "model": checkpoints[0],
            "name": "bench",
            "checkpoints": checkpoints,
            "data": {"path": str(data)},
            "n_sentences": n,
            "batch_size": 8,
            "max_length": 64,
            "device": "cpu",
            "num_actors": num_actors,
            "lake": str(lake),
        }
    )


def synthetic(root: Path, n_checkpoints: int = 12, n_actors: int = 4) -> tuple[list[dict], dict]:
    import ray
    from ray.cluster_utils import Cluster

    from neuronxa_ray.execution import RunOptions, run_jobs
    from neuronxa_ray.query import connect

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(n_actors):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, configure_logging=False)
    try:
        job = _job(_checkpoints(root / "synthetic", n_checkpoints, real=False), _data(root, 4), root / "lake-a", 4, 4)
        rep = run_jobs([job], RunOptions(progress=False, worker_factory=_sleep_worker(LOAD_S, COSTS)))
        assert rep.ok, rep.failed[:3]  # a makespan of failed units would measure nothing
        span = connect(job.lake).execute("SELECT min(started_at), max(finished_at) FROM attempts").fetchone()
    finally:
        ray.shutdown()
        cluster.shutdown()
    makespan = (span[1] - span[0]) / dt.timedelta(seconds=1)
    bound = n_checkpoints * sum(COSTS.values()) / n_actors + LOAD_S
    print(
        f"  {n_checkpoints} checkpoints x {len(LANGS)} languages on {n_actors} actors: makespan {makespan:.2f}s,"
        f" lower bound {bound:.2f}s, {rep.loads} loads",
        flush=True,
    )
    results = [
        report("synthetic makespan / lower bound", makespan / bound, 1.15, "x", higher_is_better=False),
        report(
            "synthetic model loads / (checkpoints + actors)",
            rep.loads / (n_checkpoints + n_actors),
            1.0,
            "x",
            higher_is_better=False,
        ),
    ]
    return results, {"makespan_s": makespan, "lower_bound_s": bound, "loads": rep.loads, "ok": rep.ok}


def real(root: Path, n_checkpoints: int = 6, n_sentences: int = 20) -> tuple[list[dict], dict]:
    import dataclasses

    import ray

    from neuronxa_ray.execution import RunOptions, run_jobs

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        checkpoints = _checkpoints(root / "real", n_checkpoints, real=True)
        data = _data(root / "real", n_sentences)
        t0 = time.perf_counter()
        loop_loads = 0
        for i, checkpoint in enumerate(checkpoints):  # the loop it replaced: fresh actors for every checkpoint
            job = _job([checkpoint], data, root / "lake-loop", 2, n_sentences)
            job = dataclasses.replace(job, checkpoints=job.resolved_checkpoints())
            loop_loads += run_jobs([job], RunOptions(progress=False)).loads
            print(f"    loop: checkpoint {i + 1}/{len(checkpoints)} done", flush=True)
        loop_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = run_jobs([_job(checkpoints, data, root / "lake-pool", 2, n_sentences)], RunOptions(progress=False))
        pool_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    print(
        f"  {n_checkpoints} checkpoints x {len(LANGS)} languages on 2 actors: per-checkpoint loop {loop_s:.1f}s"
        f" ({loop_loads} loads), one pool {pool_s:.1f}s ({rep.loads} loads)",
        flush=True,
    )
    results = [report("real tiny models: per-checkpoint loop / pool, wall time", loop_s / pool_s, 1.0, "x")]
    return results, {"loop_s": loop_s, "pool_s": pool_s, "loop_loads": loop_loads, "pool_loads": rep.loads}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["synthetic", "real"])
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    results, payload = [], {}
    if args.only in (None, "synthetic"):
        res, payload["synthetic"] = synthetic(root)
        results += res
    if args.only in (None, "real"):
        res, payload["real"] = real(root)
        results += res
    save("scheduler", {"results": results, **payload})
    return results


if __name__ == "__main__":
    main()
