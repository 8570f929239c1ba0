"""`neuronxa-ray watch`: checkpoints that appear while it watches are evaluated once their files stop changing,
in step order, each printing its row of the training curve; it stops at --until-step."""

import shutil
import threading
import time

import yaml
from fault_workers import wait_for
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.cli import main
from neuronxa_ray.config import step_from_name
from neuronxa_ray.sql import connect


def test_step_is_parsed_from_the_name():
    assert step_from_name("checkpoint-1500") == 1500
    assert step_from_name("global_step20/ep2-step300") == 300
    assert step_from_name("last") is None


def test_watch_evaluates_new_checkpoints_as_they_appear(ray_session, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "model": "tiny",
                "name": "tiny",
                "checkpoints": {"glob": str(ckpts / "checkpoint-*")},
                "data": {"path": str(data)},
                "n_sentences": 6,
                "device": "cpu",
                "lake": str(tmp_path / "lake"),
            }
        )
    )
    out = {}
    argv = ["watch", str(job), "--interval", "0.3", "--settle", "1", "--until-step", "200", "--no-progress"]
    watcher = threading.Thread(target=lambda: out.update(code=main(argv)), daemon=True)
    watcher.start()
    time.sleep(1.0)
    save_tiny("llama", ckpts / "checkpoint-100", seed=1)

    def scored(name):
        try:
            rows = (
                connect(tmp_path / "lake")
                .execute("SELECT count(*) FROM alignment WHERE checkpoint = ?", [name])
                .fetchone()
            )
        except Exception:  # the lake does not exist yet
            return False
        return rows[0] > 0

    wait_for(lambda: scored("checkpoint-100"), timeout_s=180)
    # a checkpoint being written: its config first, the weights a little later; never evaluated half-written
    staging = tmp_path / "staging"
    save_tiny("llama", staging, seed=2)
    (ckpts / "checkpoint-200").mkdir()
    shutil.copy(staging / "config.json", ckpts / "checkpoint-200")
    time.sleep(2.5)
    for f in staging.iterdir():
        shutil.copy(f, ckpts / "checkpoint-200")
    watcher.join(timeout=240)
    assert not watcher.is_alive() and out["code"] == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in printed] == ["100", "200"]
    assert all("NASCA" in line and "MEXA" in line for line in printed)
    curve = (
        connect(tmp_path / "lake")
        .execute("SELECT DISTINCT step, checkpoint FROM training_curve WHERE lang = '*' ORDER BY step")
        .fetchall()
    )
    assert curve == [(100, "checkpoint-100"), (200, "checkpoint-200")]
