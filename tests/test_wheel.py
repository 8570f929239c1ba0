"""The package as a cluster node gets it: a wheel, installed (not editable) into a fresh virtual environment, run
from a directory outside the repository, with a relative lake path. The SQL views must ship inside the wheel."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from tiny_models import TEXTS, save_tiny

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding the wheel; its dependencies come from this environment's site-packages (listed in a
    .pth file, which adds the directory without running its .pth files, so no editable install leaks in)."""
    root = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    build = subprocess.run(
        [*pip_wheel, "-w", str(root / "dist"), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (root / "dist").glob("neuronxa_ray-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    return venv, wheel


def test_the_wheel_holds_the_views(installed):
    import zipfile

    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    views = sorted(n for n in names if n.startswith("neuronxa_ray/views/") and n.endswith(".sql"))
    assert len(views) == len(list((REPO / "sql").glob("*.sql"))) >= 5
    assert "neuronxa_ray/data/udhr/eng.txt" in names


def test_run_sql_and_scores_from_the_installed_wheel(installed, tmp_path):
    venv, _ = installed
    save_tiny("llama", tmp_path / "model")
    work = tmp_path / "elsewhere"  # outside the repository: nothing there to import by accident
    (work / "data").mkdir(parents=True)
    for lang, texts in TEXTS.items():
        (work / "data" / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    job = {"model": str(tmp_path / "model"), "name": "tiny", "data": {"path": "data"}, "n_sentences": 6}
    (work / "job.yaml").write_text(yaml.safe_dump({**job, "device": "cpu"}))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "NEURONXA_RAY_SQL_DIR")}
    env.update(HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")

    def cli(*args):
        return subprocess.run(
            [str(venv / "bin" / "neuronxa-ray"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import neuronxa_ray; print(neuronxa_ray.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not the repository's
    run = cli("run", "job.yaml", "--lake", "lakerel", "--no-progress")
    assert run.returncode == 0, run.stderr[-3000:]
    assert " fra " in run.stdout and "NASCA" in run.stdout
    assert (work / "lakerel" / "runs").is_dir()  # one lake: the relative path made absolute in the driver
    assert not list(Path(env.get("HOME", "/nonexistent")).glob("lakerel"))
    out = cli("sql", "--lake", "lakerel", "--format", "json", "SELECT model, started_at, n_languages FROM runs")
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout)
    assert row["model"] == "tiny" and row["n_languages"] == 3 and row["started_at"]  # TIMESTAMPTZ converts
    scores = cli("scores", "--lake", "lakerel")
    assert scores.returncode == 0 and "deu" in scores.stdout and "MEXA" in scores.stdout
