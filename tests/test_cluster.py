"""The scheduler on a real multi-node Ray cluster (ray.cluster_utils.Cluster, one machine): lost nodes, killed
actors, unplaceable actors and a failing language. The fault runs must end with the same lake as a clean run."""

import os
import signal
import threading
import time

import pytest
from fault_workers import signals, slow_worker, wait_for
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.config import job_from_dict
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution import RunOptions, run_jobs
from neuronxa_ray.lake import Lake
from neuronxa_ray.query import connect

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster(without_kept_actors):
    """A head without CPUs (the driver's node) and three 1-CPU worker nodes: two actors plus room for one more.
    Each run starts its own actors: the tests kill them and their nodes."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 1024 * 1024})
    for _ in range(3):
        c.add_node(**NODE)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, configure_logging=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def make_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    data = root / "data"
    data.mkdir()
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    checkpoints = []
    for step in (1, 2):
        save_tiny("llama", root / f"checkpoint-{step}", seed=step)
        checkpoints.append(str(root / f"checkpoint-{step}"))

    def make(lake, **extra):
        raw = {
            "model": checkpoints[0],
            "name": "tiny-llama",
            "checkpoints": checkpoints,
            "data": {"path": str(data)},
            "n_sentences": 6,
            "batch_size": 4,
            "num_actors": 2,
            "device": "cpu",
            "lake": str(lake),
            "placement_timeout_s": 300,  # a machine loaded by a second suite took over 30 s to start an actor
            **extra,
        }
        return job_from_dict(raw)

    return make


@pytest.fixture(scope="module")
def clean_lake(cluster, make_job, tmp_path_factory):
    lake = tmp_path_factory.mktemp("clean") / "lake"
    report = run_jobs([make_job(lake)], RunOptions(progress=False))
    assert report.ok and report.n_units == 6
    assert report.loads <= 2 + 2  # checkpoints + actors
    return lake


def _alignment(lake):
    return connect(lake).execute("SELECT * EXCLUDE (n_sentences) FROM alignment ORDER BY ALL").fetchall()


def _run_in_thread(job, factory):
    out = {}

    def target():
        try:
            out["report"] = run_jobs([job], RunOptions(progress=False, worker_factory=factory))
        except BaseException as e:  # surfaced by the test
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _assert_same_lake_and_attempts(lake, clean_lake, victim):
    assert _alignment(lake) == _alignment(clean_lake)  # every alignment row equal to the clean run's
    con = connect(lake)
    dupes = con.execute(
        "SELECT model, checkpoint, pivot_lang, lang, method, layer FROM alignment GROUP BY ALL HAVING count(*) > 1"
    ).fetchall()
    assert dupes == []
    files = sorted(p.relative_to(lake) for p in lake.rglob("*") if p.is_file() and "attempts" not in p.parts)
    clean = sorted(
        p.relative_to(clean_lake) for p in clean_lake.rglob("*") if p.is_file() and "attempts" not in p.parts
    )
    # runs rows and catalogue entries are named by their run and time; every data file and marker is the clean run's
    bookkeeping = ("runs", "_catalog")
    assert [f for f in files if f.parts[0] not in bookkeeping] == [f for f in clean if f.parts[0] not in bookkeeping]
    assert Lake(lake).check() == []  # and the catalogue agrees with the markers
    statuses = con.execute(
        "SELECT status FROM attempts WHERE checkpoint = ? AND lang = ? ORDER BY attempt",
        [victim["checkpoint"], victim["lang"]],
    ).fetchall()
    assert [s for (s,) in statuses] == ["lost", "ok"]
    status = con.execute("SELECT DISTINCT status FROM unit_status").fetchall()
    assert status == [("done",)]


def test_node_lost_mid_language_is_survived(cluster, make_job, clean_lake, tmp_path):
    signal_dir = tmp_path / "signals"
    signal_dir.mkdir()
    lake = tmp_path / "lake"
    thread, out = _run_in_thread(make_job(lake), slow_worker(str(signal_dir), delay_s=3.0))
    victim = wait_for(lambda: next((s for s in signals(signal_dir) if s["lang"] != "eng"), None))
    node = next(n for n in cluster.list_all_nodes() if n.node_id == victim["node_id"])
    cluster.remove_node(node, allow_graceful=False)
    thread.join(timeout=300)
    cluster.add_node(**NODE)  # back to three worker nodes for the next test
    assert "error" not in out, out.get("error")
    report = out["report"]
    assert report.ok, report.failed
    _assert_same_lake_and_attempts(lake, clean_lake, victim)


def test_killed_actor_process_is_survived(cluster, make_job, clean_lake, tmp_path):
    signal_dir = tmp_path / "signals"
    signal_dir.mkdir()
    lake = tmp_path / "lake"
    thread, out = _run_in_thread(make_job(lake), slow_worker(str(signal_dir), delay_s=3.0))
    victim = wait_for(lambda: next((s for s in signals(signal_dir) if s["lang"] != "eng"), None))
    os.kill(victim["pid"], signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in out, out.get("error")
    assert out["report"].ok, out["report"].failed
    _assert_same_lake_and_attempts(lake, clean_lake, victim)


def test_unplaceable_actors_give_a_clear_error_in_time(cluster, make_job, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(NeuronxaError) as info:
        run_jobs([make_job(tmp_path / "lake", num_actors=5, placement_timeout_s=5)], RunOptions(progress=False))
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert elapsed < 90
    assert "could not place 5 actor(s) of {'CPU': 1}" in message and "at most 3 such actor(s) fit" in message
    assert "\n" not in message
    with pytest.raises(NeuronxaError, match="asked for, but the Ray cluster has no GPU"):
        run_jobs([make_job(tmp_path / "lake2", device="cuda")], RunOptions(progress=False))


def test_a_failing_language_fails_alone_and_a_rerun_computes_only_it(cluster, make_job, clean_lake, tmp_path):
    signal_dir = tmp_path / "signals"
    signal_dir.mkdir()
    lake = tmp_path / "lake"
    job = make_job(lake)
    report = run_jobs([job], RunOptions(progress=False, worker_factory=slow_worker(str(signal_dir), 0.0, ("deu",))))
    assert sorted((f.checkpoint, f.lang) for f in report.failed) == [
        ("checkpoint-1", "deu"),
        ("checkpoint-2", "deu"),
    ]
    assert all("sentence 3 has a token the model cannot embed" in f.error for f in report.failed)
    assert all(f.attempts == 1 for f in report.failed)  # its own error: not retried elsewhere
    con = connect(lake)
    assert con.execute("SELECT DISTINCT checkpoint, lang FROM alignment ORDER BY ALL").fetchall() == [
        ("checkpoint-1", "fra"),
        ("checkpoint-2", "fra"),
    ]
    assert con.execute("SELECT checkpoint, n_done, n_failed FROM checkpoint_status").fetchall() == [
        ("checkpoint-1", 2, 1),
        ("checkpoint-2", 2, 1),
    ]
    rerun = run_jobs([job], RunOptions(progress=False))
    assert rerun.ok and rerun.n_units == 2
    assert _alignment(lake) == _alignment(clean_lake)
    assert set(connect(lake).execute("SELECT DISTINCT status FROM unit_status").fetchall()) == {("done",)}
