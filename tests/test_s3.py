"""The lake on a real S3 server (SeaweedFS on 127.0.0.1): the whole job, sql and scores, a rerun that skips
everything, a damaged language redone, scores equal to a local lake; bad buckets, credentials and endpoints fail
in one line before any model loads; leases across processes."""

import io
import multiprocessing as mp
import os
import uuid

import numpy as np
import pyarrow.fs as pafs
import pytest
from run_helpers import run_job
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.cli import main, print_scores
from neuronxa_ray.config import job_from_dict
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake
from neuronxa_ray.query import connect

SCORES = "SELECT method, lang, layer, score FROM alignment ORDER BY ALL"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3job")
    save_tiny("llama", root / "model", seed=5)
    data = root / "data"
    data.mkdir()
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    return {
        "model": str(root / "model"),
        "name": "tiny-llama",
        "data": {"path": str(data)},
        "pivot": "eng",
        "n_sentences": 6,
        "batch_size": 4,
        "device": "cpu",
    }


def _uri(s3, name: str) -> str:
    return f"s3://{s3['bucket']}/{name}-{uuid.uuid4().hex[:8]}"


def test_job_on_s3_matches_local_and_resumes(ray_session, s3_env, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = _uri(s3_env, "job")
    runs = run_job(job_from_dict({**tiny, "lake": uri}), progress=False)
    assert len(runs) == 1 and runs[0]["n_languages_computed"] == 3
    assert os.listdir(tmp_path) == []  # nothing written to a local directory named after the URI
    local = run_job(job_from_dict({**tiny, "lake": str(tmp_path / "local")}), progress=False)
    assert local[0]["n_languages_computed"] == 3

    s3_scores = connect(uri).execute(SCORES).fetchall()
    assert len(s3_scores) == 2 * (2 * 2 + 2 * 3)
    assert s3_scores == connect(tmp_path / "local").execute(SCORES).fetchall()
    con = connect(uri)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM alignment_from_states").fetchone()[0] > 0

    assert main(["sql", "--lake", uri, "--format", "csv", "SELECT count(*) AS n FROM alignment"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(len(s3_scores))]
    assert main(["scores", "--lake", uri]) == 0
    out_s3 = capsys.readouterr().out
    buf = io.StringIO()
    print_scores(connect(tmp_path / "local"), out=buf)
    assert out_s3 == buf.getvalue() and "tiny-llama" in out_s3
    assert main(["lake", "check", "--lake", uri]) == 0

    assert run_job(job_from_dict({**tiny, "lake": uri}), progress=False) == []  # rerun: nothing to do

    # a run killed mid-way: one language's matches file truncated, another's marker never written
    lake, fs = Lake(uri), s3_env["fs"]
    sim = lake.storage.path(lake.language_file("matches", "tiny-llama", "main", "fra", "eng"))
    with fs.open_input_stream(sim) as f:
        data = f.read()
    with fs.open_output_stream(sim) as f:
        f.write(data[: len(data) // 2])
    fs.delete_file(lake.storage.path(lake.done_marker("tiny-llama", "main", "eng", "deu")))
    assert connect(uri).execute("SELECT DISTINCT lang FROM alignment").fetchall() == []  # neither is scored
    assert main(["lake", "check", "--lake", uri]) == 1
    assert main(["lake", "check", "--lake", uri, "--repair"]) == 0
    resumed = run_job(job_from_dict({**tiny, "lake": uri}), progress=False)
    assert [r["n_languages_computed"] for r in resumed] == [2]  # exactly fra and deu
    assert connect(uri).execute(SCORES).fetchall() == s3_scores
    assert connect(uri).execute("SELECT count(*) FROM runs").fetchone()[0] == 2


def _no_model_load(monkeypatch):
    import neuronxa_ray.model.load as models

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(models, "load_tokenizer", boom)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("bucket", "bucket 'no-such-bucket' does not exist"),
        ("credentials", "credentials were refused|forbidden|denied"),
        ("endpoint", "endpoint unreachable"),
    ],
)
def test_bad_s3_lake_fails_in_one_line_before_models_load(s3_env, tiny, tmp_path, monkeypatch, case, match):
    monkeypatch.chdir(tmp_path)
    _no_model_load(monkeypatch)
    uri = _uri(s3_env, "bad")
    if case == "bucket":
        uri = "s3://no-such-bucket/lake"
    elif case == "credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(NeuronxaError, match=match) as e:
        run_job(job_from_dict({**tiny, "lake": uri}), progress=False)
    assert "\n" not in str(e.value) and uri in str(e.value)
    assert os.listdir(tmp_path) == []
    if case == "bucket":
        assert s3_env["fs"].get_file_info("no-such-bucket").type == pafs.FileType.NotFound


def test_sql_on_a_missing_or_unreachable_s3_lake_is_one_line(s3_env, monkeypatch, capsys):
    assert main(["sql", "--lake", f"s3://{s3_env['bucket']}/nothing-here", "SELECT 1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert main(["scores", "--lake", f"s3://{s3_env['bucket']}/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read" in err


def test_unknown_scheme_fails_before_models_load(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _no_model_load(monkeypatch)
    with pytest.raises(NeuronxaError, match="unknown scheme"):
        run_job(job_from_dict({**tiny, "lake": "s4://b/p"}), progress=False)
    assert os.listdir(tmp_path) == []


def _acquire(uri: str, fp: str, run_id: str, env: dict, queue) -> None:
    os.environ.update(env)
    try:
        Lake(uri).acquire("m", "c", fp, run_id)
        queue.put(("ok", run_id))
    except NeuronxaError as e:
        queue.put(("refused", str(e)))


def test_leases_across_processes_on_s3(s3_env):
    uri = _uri(s3_env, "lease")
    held = Lake(uri).acquire("m", "c", "A", "run-a")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_acquire, args=(uri, fp, rid, s3_env["env"], queue))
        for fp, rid in (("B", "run-b"), ("A", "run-a2"))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = sorted(queue.get(timeout=5) for _ in procs)
    assert got[0] == ("ok", "run-a2")  # same settings: shares
    assert got[1][0] == "refused" and "run-a" in got[1][1]  # other settings: refused, naming the holder
    held.release()


def test_states_round_trip_on_s3(s3_env):
    from neuronxa_ray.lake import states_table

    lake = Lake(_uri(s3_env, "rt"))
    rng = np.random.default_rng(0)
    states = {"nas": rng.random((3, 2, 4)).astype(np.float32)}
    w = lake.write(
        "sentence_states",
        states_table("m", "c", "fra", list("abc"), [1, 2, 3], states),
        lake.language_file("sentence_states", "m", "c", "fra"),
    )
    assert lake.storage.info(w.path).size == w.bytes
    np.testing.assert_array_equal(lake.read_states("m", "c", "fra")["nas"], states["nas"])


def _storage_killer(pid_file: str, at_lang: str):
    """A LanguageWorker that kills the S3 server (SIGKILL, its pid read from pid_file, once) when `at_lang` starts:
    the lake stops answering in the middle of a run. Built by a function, so Ray ships the class by value."""
    from neuronxa_ray.worker.worker import LanguageWorker

    class StorageKiller(LanguageWorker):
        def process(self, task, pivot=None, **kwargs):
            import signal
            import time
            from pathlib import Path

            pid = Path(pid_file)
            if task.lang == at_lang and pid.exists():
                for _, write in list(self._pending):  # the languages before it are safely written first
                    write.exception()
                os.kill(int(pid.read_text()), signal.SIGKILL)
                pid.with_suffix(".killed").write_text(repr(time.time()))
                pid.unlink()
            return super().process(task, pivot, **kwargs)

    return StorageKiller


def test_lake_lost_mid_run_fails_the_units_then_a_rerun_completes(ray_session, tiny, tmp_path, monkeypatch, capsys):
    """The S3 server killed while a run writes: the units that could not be written fail after bounded retries, the
    run ends with the failed-unit table (exit 1, no traceback), and once the server is back a rerun completes."""
    import functools
    import time

    import yaml
    from conftest import start_seaweedfs, stop_seaweedfs

    import neuronxa_ray.execution as execution
    import neuronxa_ray.execution.lakes as lakes

    root = tmp_path / "weed"
    root.mkdir()
    server = start_seaweedfs(root)
    try:
        for k, v in server["env"].items():
            monkeypatch.setenv(k, v)
        uri = f"s3://{server['bucket']}/lost"
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({**tiny, "lake": uri, "placement_timeout_s": 300}))  # busy machines start slowly
        pid_file = tmp_path / "weed.pid"
        pid_file.write_text(str(server["proc"].pid))
        planted = functools.partial(execution.RunOptions, worker_factory=_storage_killer(str(pid_file), "fra"))
        monkeypatch.setattr(execution, "RunOptions", planted)
        monkeypatch.setattr(lakes, "LAKE_OUTAGE_S", 10.0)  # the default (60 s), shorter for the test
        code = main(["run", str(job), "--no-progress"])
        err = capsys.readouterr().err
        assert pid_file.with_suffix(".killed").exists(), err[-3000:]
        after_kill = time.time() - float(pid_file.with_suffix(".killed").read_text())
        assert not pid_file.exists() and server["proc"].wait(10) is not None  # the server was killed mid-run
        assert code == 1, err[-3000:]
        assert "Traceback" not in err
        table = err[err.index("unit(s) failed") :].splitlines()
        failed = {line.split()[2] for line in table[2:] if line.strip()}
        assert failed and failed <= {"fra", "deu"}, table
        assert all("lake" in line for line in table[2:] if line.strip()), table
        # the S3 client's own retries (about 7 s), the 10 s outage, and no waiting on a dead lake for bookkeeping
        assert after_kill < 40, after_kill
        monkeypatch.setattr(execution, "RunOptions", planted.func)

        server = start_seaweedfs(root, server["ports"])  # the lake comes back
        assert main(["run", str(job), "--no-progress", "--no-scores"]) == 0
        langs = connect(uri).execute("SELECT DISTINCT lang FROM alignment ORDER BY 1").fetchall()
        assert langs == [("deu",), ("fra",)]
        assert main(["lake", "check", "--lake", uri]) == 0
    finally:
        stop_seaweedfs(server)


def test_lake_back_within_the_outage_the_run_completes(ray_session, tiny, tmp_path, monkeypatch, capsys):
    """The S3 server killed mid-run and started again 20 seconds later: the units that could not be written wait
    for the lake (probed with back-off) and are retried; the run completes (exit 0) and the lake checks clean."""
    import functools
    import threading
    import time

    import yaml
    from conftest import start_seaweedfs, stop_seaweedfs

    import neuronxa_ray.execution as execution

    root = tmp_path / "weed"
    root.mkdir()
    servers = [start_seaweedfs(root)]
    try:
        for k, v in servers[0]["env"].items():
            monkeypatch.setenv(k, v)
        uri = f"s3://{servers[0]['bucket']}/back"
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({**tiny, "lake": uri, "placement_timeout_s": 300}))  # busy machines start slowly
        pid_file = tmp_path / "weed.pid"
        pid_file.write_text(str(servers[0]["proc"].pid))
        planted = functools.partial(execution.RunOptions, worker_factory=_storage_killer(str(pid_file), "fra"))
        monkeypatch.setattr(execution, "RunOptions", planted)

        def restart() -> None:
            while pid_file.exists():
                time.sleep(0.1)
            servers[0]["proc"].wait(10)
            # longer than the S3 client's own retries can last, so that the scheduler's wait is what is tested:
            # Arrow's AwsStandardS3RetryStrategy(max_attempts=5) waits rand(0..1 s) x 2^i before retry i (i = 0..3),
            # at most 15 s in all (7.5 s on average). With 12 s here one run in a load round had its write ride out
            # the outage inside the client (no failed attempt on record)
            time.sleep(20)
            servers.append(start_seaweedfs(root, servers[0]["ports"]))

        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        code = main(["run", str(job), "--no-progress", "--no-scores"])
        err = capsys.readouterr().err
        restarter.join(150)  # start_seaweedfs may still be waiting for the rest of the server (up to 60 s) when the
        assert len(servers) == 2  # run, which needed only its S3 port, is done: killed and started again
        assert code == 0, err[-3000:]
        langs = connect(uri).execute("SELECT DISTINCT lang FROM alignment ORDER BY 1").fetchall()
        assert langs == [("deu",), ("fra",)]
        statuses = connect(uri).execute("SELECT status, count(*) FROM attempts GROUP BY 1 ORDER BY 1").fetchall()
        assert dict(statuses)["ok"] == 3 and dict(statuses).get("failed", 0) >= 1  # the failed write is on record
        assert main(["lake", "check", "--lake", uri]) == 0
    finally:
        stop_seaweedfs(servers[-1])
