"""`neuronxa-ray watch`: checkpoints that appear while it watches are evaluated once their files stop changing,
in step order, each printing its row of the training curve; it stops at --until-step."""

import shutil
import threading
import time

import pytest
import yaml
from fault_workers import wait_for
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.cli import main
from neuronxa_ray.config.job import step_from_name
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.query import connect

# watch runs in a thread of its own in these tests, with its own kept actors: the actors this process's main thread
# keeps would hold the CPUs its runs need
pytestmark = pytest.mark.usefixtures("without_kept_actors")


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
                "placement_timeout_s": 300,  # a machine loaded by a second suite took over 60 s to start an actor
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

    wait_for(lambda: scored("checkpoint-100"), timeout_s=420, poll_s=1.0)  # each look opens the lake: CPU watch needs
    # a checkpoint being written: its config first, the weights a little later; never evaluated half-written
    staging = tmp_path / "staging"
    save_tiny("llama", staging, seed=2)
    (ckpts / "checkpoint-200").mkdir()
    shutil.copy(staging / "config.json", ckpts / "checkpoint-200")
    time.sleep(2.5)
    for f in staging.iterdir():
        shutil.copy(f, ckpts / "checkpoint-200")
    watcher.join(timeout=420)
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


def _glob_job(tmp_path, **extra) -> str:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "ckpts").mkdir(exist_ok=True)
    raw = {
        "model": "tiny",
        "name": "tiny",
        "checkpoints": {"glob": str(tmp_path / "ckpts" / "checkpoint-*")},
        "data": {"path": str(data)},
        "n_sentences": 6,
        "device": "cpu",
        "lake": str(tmp_path / "lake"),
        **extra,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _fake_checkpoint(tmp_path, step: int) -> None:
    ckpt = tmp_path / "ckpts" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")


def test_a_job_mistake_is_reported_before_waiting(tmp_path, capsys):
    job = _glob_job(tmp_path, languages=["fr"])  # the data has fra, not fr
    t0 = time.monotonic()
    code = main(["watch", job, "--interval", "0.2", "--settle", "0"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and time.monotonic() - t0 < 10
    assert len(err) == 1 and "'fr' not found" in err[0] and "fra" in err[0]


def test_each_checkpoint_prints_when_done_and_a_failed_one_is_retried_with_back_off(tmp_path):
    """Two checkpoints ready at once: each is reported right after its own evaluation. One fails twice (a lake that
    was down: its files never change) and is tried again after 1 s, then 2 s, and then evaluated."""
    from neuronxa_ray.config import load_job
    from neuronxa_ray.execution.watch import missing, watch

    job = load_job(_glob_job(tmp_path))
    for step in (100, 200):
        _fake_checkpoint(tmp_path, step)
    events, tries = [], []

    def run(sub):
        name = sub.checkpoints[0].name
        events.append(("run", name))
        if name == "checkpoint-100":
            tries.append(time.monotonic())
            if len(tries) < 3:
                raise NeuronxaError("lake 'x' is not writable: endpoint unreachable")

    stop = threading.Event()
    threading.Timer(60, stop.set).start()  # never hangs: a watcher that does not retry fails the asserts below

    def report(_, checkpoints):
        events.append(("report", *[c.name for c in checkpoints]))
        if checkpoints[0].name == "checkpoint-100":
            stop.set()

    state = watch(job, run, report, interval_s=0.05, settle_s=0.0, stop=stop)
    assert events[:3] == [("run", "checkpoint-100"), ("run", "checkpoint-200"), ("report", "checkpoint-200")]
    assert events[-2:] == [("run", "checkpoint-100"), ("report", "checkpoint-100")]
    assert len(tries) == 3 and tries[1] - tries[0] >= 1.0 and tries[2] - tries[1] >= 2.0
    assert missing(job, state, 200) == []


def test_exit_status_says_which_checkpoints_are_missing(tmp_path, monkeypatch, capsys):
    """--until-step reached while an earlier checkpoint still fails: exit 1, naming it and why."""
    import neuronxa_ray.execution as execution
    from neuronxa_ray.execution import FailedUnit, RunReport

    job = _glob_job(tmp_path)
    for step in (100, 200):
        _fake_checkpoint(tmp_path, step)

    def run_jobs(jobs, options=None):
        (checkpoint,) = jobs[0].checkpoints
        failed = [FailedUnit("tiny", checkpoint.name, "eng", 3, "bad weights")] if checkpoint.step == 100 else []
        return RunReport("r", [], failed, 3, 1, 0.1)

    monkeypatch.setattr(execution, "run_jobs", run_jobs)
    code = main(["watch", job, "--interval", "0.05", "--settle", "0", "--until-step", "200"])
    err = capsys.readouterr().err
    assert code == 1
    assert "still missing: checkpoint-100: 1 unit(s) of checkpoint-100 failed" in err
    assert "checkpoint-200" not in err.split("still missing")[1]


def test_sigterm_ends_watch_as_cleanly_as_ctrl_c_and_the_lake_resumes(ray_address, tmp_path):
    """SIGTERM while idle, then SIGTERM in the middle of a checkpoint's evaluation: exit 143, one line, no traceback
    or stack dump; the lake checks clean and a second watch completes it (exit 0 at --until-step)."""
    import os
    import signal
    import subprocess
    import sys

    job = _glob_job(tmp_path, placement_timeout_s=300)  # a busy machine starts actors slowly
    save_tiny("llama", tmp_path / "ckpts" / "checkpoint-100", seed=1)
    started: list[subprocess.Popen] = []
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    argv = [sys.executable, "-m", "neuronxa_ray.cli", "watch", job, "--interval", "0.3", "--settle", "0.5"]

    def start(*extra):
        proc = subprocess.Popen(
            [*argv, "--no-progress", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started.append(proc)
        return proc

    def read_until(proc, needle: str, seen: list[str]) -> None:
        for line in proc.stdout:
            seen.append(line)
            if needle in line:
                return
        raise AssertionError(f"{needle!r} never came: {''.join(seen)[-3000:]}")

    def terminated(proc, seen: list[str]) -> str:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        text = "".join(seen) + rest
        assert proc.returncode == 143, text[-3000:]
        assert "Traceback" not in text and "Stack (most recent call first)" not in text, text[-3000:]
        assert text.rstrip().endswith("neuronxa-ray: terminated"), text[-3000:]
        return text

    try:
        seen: list[str] = []
        idle = start()
        read_until(idle, "step 100 ", seen)  # its row, then it waits for the next checkpoint
        terminated(idle, seen)
        assert main(["lake", "check", "--lake", str(tmp_path / "lake")]) == 0

        save_tiny("llama", tmp_path / "ckpts" / "checkpoint-200", seed=2)
        seen = []
        busy = start()
        read_until(busy, "new checkpoint: checkpoint-200", seen)
        terminated(busy, seen)
        main(["lake", "check", "--lake", str(tmp_path / "lake"), "--repair"])  # what a cut write left, if any
        again = start("--until-step", "200")
        rest, _ = again.communicate(timeout=480)
        assert again.returncode == 0, rest[-3000:]
        assert [line.split()[1] for line in rest.splitlines() if line.startswith("step ")] == ["100", "200"]
        assert main(["lake", "check", "--lake", str(tmp_path / "lake")]) == 0
    finally:  # a failure leaves no watcher behind to hold the shared Ray's CPUs for later tests
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_a_checkpoint_restored_with_cp_a_is_tried_again(ray_session, tmp_path, caplog):
    """A checkpoint whose weights were damaged when it was evaluated, then restored with `cp -a` (the same names,
    sizes and modification times as before): its files look unchanged, yet it is tried again after a back-off."""
    import logging
    import os
    import subprocess

    job = _glob_job(tmp_path)
    staging = tmp_path / "staging"
    save_tiny("llama", staging, seed=1)
    ckpt = tmp_path / "ckpts" / "checkpoint-100"
    ckpt.mkdir(parents=True)
    for f in staging.iterdir():
        if f.suffix == ".safetensors":  # damaged: the same size and time, other bytes
            (ckpt / f.name).write_bytes(b"\0" * f.stat().st_size)
            os.utime(ckpt / f.name, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))
        else:
            shutil.copy2(f, ckpt / f.name)
    out = {}
    argv = ["watch", job, "--interval", "0.3", "--settle", "0.5", "--until-step", "100", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="neuronxa_ray"):
        watcher = threading.Thread(target=lambda: out.update(code=main(argv)), daemon=True)
        watcher.start()
        wait_for(lambda: "checkpoint-100:" in caplog.text and "(try 1;" in caplog.text, timeout_s=240)
        for f in staging.glob("*.safetensors"):
            subprocess.run(["cp", "-a", str(f), str(ckpt)], check=True)
        watcher.join(timeout=300)
    assert not watcher.is_alive() and out["code"] == 0
    rows = connect(tmp_path / "lake").execute("SELECT DISTINCT checkpoint FROM training_curve").fetchall()
    assert rows == [("checkpoint-100",)]
