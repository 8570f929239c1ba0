"""Kill the driver at random points of a run (while starting, planning, placing actors, computing, writing) eight
times in a row, rerunning each time: the final lake equals a clean run's and `lake check` reports nothing. Mid-run
kills wait for the lake to show progress (one more language committed) rather than for a share of a clean run's time,
so they land mid-run however busy the machine is."""

import os
import random
import signal
import subprocess
import sys
import time

import yaml
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.config import load_job
from neuronxa_ray.execution import RunOptions, run_jobs
from neuronxa_ray.execution.kept import kept
from neuronxa_ray.lake import Lake
from neuronxa_ray.query import connect

STEPS = (1, 2, 3, 4, 5, 6)


def _write_job(path, root, lake) -> str:
    """6 checkpoints x 3 languages x 90 sentences, one sentence per forward pass: long enough to be cut anywhere."""
    raw = {
        "model": str(root / "checkpoint-1"),
        "name": "tiny",
        "checkpoints": [str(root / f"checkpoint-{step}") for step in STEPS],
        "data": {"path": str(root / "data")},
        "n_sentences": 90,
        "batch_size": 1,
        "device": "cpu",
        "lake": str(lake),
    }
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _markers(lake) -> int:
    """Languages committed so far (their completion markers)."""
    return sum(1 for _ in (lake / "_done").rglob("*.json")) if (lake / "_done").exists() else 0


def test_driver_killed_at_random_points_then_resumed(ray_address, tmp_path):
    (tmp_path / "data").mkdir()
    for lang, texts in TEXTS.items():
        lines = [f"{text} ({i})" for i in range(15) for text in texts]
        (tmp_path / "data" / f"{lang}.txt").write_text("\n".join(lines) + "\n")
    for step in STEPS:
        save_tiny("llama", tmp_path / f"checkpoint-{step}", seed=step)
    env = {**os.environ, "RAY_ADDRESS": ray_address}

    def command(job):
        return [sys.executable, "-m", "neuronxa_ray.cli", "run", job, "--no-progress", "--no-scores"]

    clean = _write_job(tmp_path / "clean.yaml", tmp_path, tmp_path / "clean")  # a clean run, to compare with
    assert run_jobs([load_job(clean)], RunOptions(progress=False)).failed == []  # in this process: one driver less
    kept().release()  # its actor holds the shared Ray's CPUs, which the drivers below need
    job = _write_job(tmp_path / "job.yaml", tmp_path, tmp_path / "lake")
    rng = random.Random(20261122)
    kills = []
    for attempt in range(8):  # 3 early, 5 mid-run: each a new driver and actor (about 14 CPU s of start-up)
        driver = subprocess.Popen(command(job), env=env, start_new_session=True, stderr=subprocess.DEVNULL)
        if attempt % 3 == 0:  # early: while planning, starting Ray or placing actors
            time.sleep(rng.uniform(0.3, 3.0))
            where = "early"
        else:  # mid-run: once one more language is in the lake, at a random moment of the next one's work
            target = _markers(tmp_path / "lake") + 1
            deadline = time.monotonic() + 300  # progress, not a clock, decides: the same on a busy machine
            while driver.poll() is None and _markers(tmp_path / "lake") < target and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.5))
            where = "mid-run"
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            kills.append(where)
        driver.wait()
        Lake(tmp_path / "lake").check()  # the lake stays readable after every kill
    assert len(kills) >= 7, kills  # every kill landed in a running driver (one may find its run just finished)
    final = subprocess.run(command(job), env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]

    q = "SELECT * FROM alignment ORDER BY ALL"
    assert connect(tmp_path / "lake").execute(q).fetchall() == connect(tmp_path / "clean").execute(q).fetchall()
    assert Lake(tmp_path / "lake").check() == []
    counts = (
        connect(tmp_path / "lake")
        .execute("SELECT count(*), count(DISTINCT (checkpoint, lang, method, layer)) FROM alignment")
        .fetchone()
    )
    assert counts[0] == counts[1] > 0
