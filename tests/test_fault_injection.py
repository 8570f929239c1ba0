"""Kill the driver at random points of a run (while planning, placing actors, computing, writing) ten times in a
row, rerunning each time: the final lake equals a clean run's and `lake check` reports nothing."""

import os
import random
import signal
import subprocess
import sys
import time

import yaml
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.lake import Lake
from neuronxa_ray.sql import connect

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


def test_driver_killed_at_random_points_then_resumed(ray_session, tmp_path):
    (tmp_path / "data").mkdir()
    for lang, texts in TEXTS.items():
        lines = [f"{text} ({i})" for i in range(15) for text in texts]
        (tmp_path / "data" / f"{lang}.txt").write_text("\n".join(lines) + "\n")
    for step in STEPS:
        save_tiny("llama", tmp_path / f"checkpoint-{step}", seed=step)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}

    def command(job):
        return [sys.executable, "-m", "neuronxa_ray.cli", "run", job, "--no-progress", "--no-scores"]

    t0 = time.monotonic()  # a clean run, the same way, to compare with and to time
    clean = _write_job(tmp_path / "clean.yaml", tmp_path, tmp_path / "clean")
    assert subprocess.run(command(clean), env=env, capture_output=True, timeout=600).returncode == 0
    full_s = time.monotonic() - t0
    job = _write_job(tmp_path / "job.yaml", tmp_path, tmp_path / "lake")
    rng = random.Random(20261122)
    kills = []
    for _ in range(10):
        driver = subprocess.Popen(command(job), env=env, start_new_session=True, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.15, 0.6) * full_s
        time.sleep(delay)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            kills.append(round(delay, 1))
        driver.wait()
        Lake(tmp_path / "lake").check()  # the lake stays readable after every kill
    assert len(kills) >= 6, (kills, full_s)  # most kills landed mid-run
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
