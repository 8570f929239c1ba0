"""Never a stale, mixed or silently lost score; every bad input a clear, early, one-line error.

Each case runs the CLI as a user would and checks the exit code, that the message is one line naming the cause,
how long the error took where it must come early, and what the lake holds afterwards."""

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.cli import main
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake
from neuronxa_ray.query import connect


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_tiny("llama", path, seed=3)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    for lang, texts in TEXTS.items():
        (path / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


def _job(tmp_path, model, data, file="job.yaml", **fields) -> str:
    raw = {
        "model": str(model),
        "name": "tiny",
        "data": {"path": str(data)},
        "n_sentences": 6,
        "batch_size": 4,
        "device": "cpu",
        "lake": str(tmp_path / "lake"),
        **fields,
    }
    path = tmp_path / file
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _error(capsys, argv) -> tuple[int, str, float]:
    t0 = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - t0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("neuronxa-ray: error:")]
    assert len(err) == 1, err  # exactly one error line
    return code, err[0], elapsed


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("trust_remote_code", "false", "'trust_remote_code' = 'false': must be true or false"),
        ("store_states", "no", "'store_states' = 'no': must be true, false or 'auto'"),  # auto: the default
        ("max_length", True, "'max_length' = True: must be a whole number or null"),
        ("device", 0, "'device' = 0: must be a string"),
        ("lake", 5, "'lake' = 5: must be a string"),
        ("name", 123, "'name' = 123: must be a string or null"),
        ("languages", [], "'languages' = []: must name at least one language"),
        ("n_sentences", "100", "'n_sentences' = '100': must be a whole number"),
        ("pivots", "some", "'pivots' = 'some': must be 'all' or a list"),
    ],
)
def test_every_job_field_is_typed(tmp_path, model_dir, data_dir, capsys, field, value, expected):
    job = _job(tmp_path, model_dir, data_dir, **{field: value})
    code, line, _ = _error(capsys, ["run", job])
    assert code == 2 and "job.yaml" in line and expected in line
    assert not (tmp_path / "lake").exists()


def test_trust_remote_code_true_warns(tmp_path, model_dir, data_dir, caplog, ray_session):
    job = _job(tmp_path, model_dir, data_dir, trust_remote_code=True, languages=["fra"])
    assert main(["run", job, "--no-progress", "--no-scores"]) == 0
    assert "Python code from the model directory will run" in caplog.text


def test_model_and_lake_problems_fail_fast_in_one_line(tmp_path, model_dir, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = []
    cases.append((_job(tmp_path, tmp_path / "no-such-model", data_dir, file="case-1.yaml"), "does not exist"))
    monkeypatch.chdir(tmp_path)
    cases.append(
        (_job(tmp_path, "models/tiny", data_dir, file="case-2.yaml"), "not in the hub cache, and HF_HUB_OFFLINE is set")
    )
    no_config = tmp_path / "no-config"
    shutil.copytree(model_dir, no_config)
    (no_config / "config.json").unlink()
    cases.append((_job(tmp_path, no_config, data_dir, file="case-3.yaml"), "has no config.json"))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(model_dir, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    cases.append((_job(tmp_path, no_weights, data_dir, file="case-4.yaml"), "has no weight files"))
    for name, edit, message in (
        ("other-arch", {"model_type": "mpt"}, "architecture 'mpt' has no FFN adapter"),
        ("remote-code", {"auto_map": {"AutoModel": "modeling.Custom"}}, "needs its own Python code"),
    ):
        path = tmp_path / name
        shutil.copytree(model_dir, path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **edit}))
        cases.append((_job(tmp_path, path, data_dir, file=f"case-{name}.yaml"), message))
    cuda = _job(tmp_path, model_dir, data_dir, file="case-6.yaml", device="cuda")
    cases.append((cuda, "device 'cuda' asked for, but"))
    lake_file = tmp_path / "lake-file"
    lake_file.write_text("x")
    cases.append((_job(tmp_path, model_dir, data_dir, file="case-7.yaml", lake=str(lake_file)), "is a file"))
    read_only = "/sys/fs/neuronxa-lake-test"  # sysfs refuses new directories, for root too
    cases.append((_job(tmp_path, model_dir, data_dir, file="case-8.yaml", lake=read_only), "not writable"))
    for job, message in cases:
        code, line, elapsed = _error(capsys, ["run", job])
        assert code == 2 and message in line, (job, line)
        assert elapsed < 10, (line, elapsed)  # before Ray starts or any model loads
    assert not list(tmp_path.glob("**/_done"))


def test_verbose_errors_keep_their_traceback(tmp_path, data_dir, capsys):
    job = _job(tmp_path, tmp_path / "missing", data_dir)
    assert main(["-v", "run", job]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("neuronxa-ray: error: model directory")


def test_language_option_does_not_swallow_the_job_and_a_typo_in_scores_is_named(
    tmp_path, model_dir, data_dir, capsys, ray_session
):
    job = _job(tmp_path, model_dir, data_dir)
    assert main(["run", "--languages", "fra", job, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert " fra " in out and " deu " not in out
    code, line, _ = _error(capsys, ["scores", "--lake", str(tmp_path / "lake"), "--model", "tinny"])
    assert code == 2 and "no model 'tinny' in the lake; did you mean 'tiny'?" in line


def _alignment(lake) -> list:
    return connect(lake).execute("SELECT * FROM alignment ORDER BY ALL").fetchall()


def test_new_weights_in_the_same_directory_recompute_everything(tmp_path, data_dir, ray_session):
    from neuronxa_ray.config import load_job
    from neuronxa_ray.execution import RunOptions, run_jobs

    model = tmp_path / "last"
    save_tiny("llama", model, seed=1)
    job = load_job(_job(tmp_path, model, data_dir))
    assert run_jobs([job], RunOptions(progress=False)).n_units == 3
    time.sleep(0.01)
    save_tiny("llama", model, seed=2)  # what a training run does to `last/`
    rerun = run_jobs([job], RunOptions(progress=False))
    assert rerun.n_units == 3  # the pivot and every language, never a mix of old and new
    clean = tmp_path / "clean"
    shutil.copytree(model, clean)
    (tmp_path / "c").mkdir()
    clean_job = load_job(_job(tmp_path / "c", clean, data_dir))  # a lake that only ever saw the new weights
    run_jobs([clean_job], RunOptions(progress=False))
    assert _alignment(job.lake) == _alignment(clean_job.lake)


def test_other_settings_for_some_languages_never_share_a_score(
    tmp_path, model_dir, data_dir, caplog, capsys, ray_session
):
    job = _job(tmp_path, model_dir, data_dir)
    assert main(["run", job, "--no-progress", "--no-scores"]) == 0
    small = ["run", job, "--languages", "fra", "--n-sentences", "4", "--no-progress", "--no-scores"]
    # a small test run would replace the pivot deu was scored against: refused, naming what it would drop
    code, line, elapsed = _error(capsys, small)
    assert code == 2 and elapsed < 30
    assert "1 language(s)" in line and "(deu)" in line and "n_sentences 6 -> 4" in line
    assert "--force" in line and "another lake" in line
    before = connect(tmp_path / "lake").execute("SELECT DISTINCT lang, n_sentences FROM alignment ORDER BY 1")
    assert before.fetchall() == [("deu", 6), ("fra", 6)]  # nothing touched
    assert main([*small, "--force"]) == 0  # forced: the old behaviour
    con = connect(tmp_path / "lake")  # deu was computed with 6 sentences against the old pivot: left out
    assert "deu" in caplog.text and "other settings" in caplog.text
    assert con.execute("SELECT DISTINCT lang, n_sentences FROM alignment").fetchall() == [("fra", 4)]
    same = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE a.score = s.score) FROM alignment AS a "
        "JOIN alignment_from_states AS s USING (model, checkpoint, method, pivot_lang, lang, layer)"
    ).fetchone()
    assert same[0] > 0 and same[0] == same[1]  # stored states and scores agree: one pivot, one setting
    assert main(["run", job, "--no-progress", "--no-scores"]) == 0  # back to 6: everything again, consistently
    assert connect(tmp_path / "lake").execute("SELECT DISTINCT n_sentences FROM alignment").fetchall() == [(6,)]


def test_a_broken_file_is_recomputed_and_never_stops_other_queries(tmp_path, model_dir, data_dir, ray_session):
    from neuronxa_ray.config import load_job
    from neuronxa_ray.execution import RunOptions, run_jobs

    job = load_job(_job(tmp_path, model_dir, data_dir))
    run_jobs([job], RunOptions(progress=False))
    before = _alignment(job.lake)
    lake = Lake(job.lake)
    states = tmp_path / "lake" / lake.language_file("sentence_states", "tiny", "main", "deu")
    states.write_bytes(states.read_bytes()[:-50])  # truncated
    con = connect(job.lake)
    assert con.execute("SELECT DISTINCT lang FROM alignment ORDER BY 1").fetchall() == [("fra",)]
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert main(["lake", "check", "--lake", job.lake]) == 1
    assert run_jobs([job], RunOptions(progress=False)).n_units == 1  # deu only
    assert _alignment(job.lake) == before
    assert main(["lake", "check", "--lake", job.lake]) == 0
    assert run_jobs([job], RunOptions(progress=False, recompute=["fra"])).n_units == 1
    assert run_jobs([job], RunOptions(progress=False, force=True)).n_units == 3
    assert _alignment(job.lake) == before


def test_unstored_pivot_states_are_recomputed_when_a_language_is_added(tmp_path, model_dir, data_dir, ray_session):
    job = _job(tmp_path, model_dir, data_dir, store_states=False, languages=["fra"])
    assert main(["run", job, "--no-progress", "--no-scores"]) == 0
    assert main(["run", job, "--languages", "fra,deu", "--no-progress", "--no-scores"]) == 0  # not a dead end
    langs = connect(tmp_path / "lake").execute("SELECT DISTINCT lang FROM alignment ORDER BY 1").fetchall()
    assert langs == [("deu",), ("fra",)]


def test_long_sentences_are_cut_at_the_models_positions_with_a_warning(tmp_path, data_dir, caplog, ray_session):
    model = tmp_path / "gpt2"
    save_tiny("gpt2", model)  # 128 positions
    data = tmp_path / "long"
    data.mkdir()
    for lang, texts in TEXTS.items():
        long = [" ".join([t] * 20) for t in texts]  # far past 128 tokens
        (data / f"{lang}.txt").write_text("\n".join(long) + "\n", encoding="utf-8")
    job = _job(tmp_path, model, data, max_length=None)
    assert main(["run", job, "--no-progress", "--no-scores"]) == 0
    assert "6 of 6 sentences cut at max_length 128 tokens" in caplog.text
    rows = connect(tmp_path / "lake").execute("SELECT max(n_tokens) FROM sentence_states").fetchone()
    assert rows == (128,)


def test_a_bom_is_removed_once_with_a_word(tmp_path, model_dir, data_dir, caplog):
    from neuronxa_ray.corpus.readers import read_corpus

    with_bom = tmp_path / "bom"
    shutil.copytree(data_dir, with_bom)
    (with_bom / "fra.txt").write_bytes(b"\xef\xbb\xbf" + (data_dir / "fra.txt").read_bytes())
    (with_bom / "x.tsv").write_bytes(b"\xef\xbb\xbfid\tlang\ttext\n1\teng\tHello\n")
    assert read_corpus(with_bom).sentences == read_corpus(data_dir).sentences
    assert read_corpus(with_bom / "x.tsv").sentences == {"eng": ["Hello"]}
    assert caplog.text.count("byte-order mark") == 2
    (with_bom / ".txt").write_text("\n".join(TEXTS["eng"]) + "\n")
    with pytest.raises(NeuronxaError, match="gives an empty language code"):
        read_corpus(with_bom)


def test_a_dead_runs_lease_on_a_finished_checkpoint_is_tidied(tmp_path, model_dir, data_dir, ray_session):
    """A run killed after its last language was written leaves its lease on a checkpoint with nothing left to do;
    the next run (which needs no lease there) still removes it, so `lake check` is clean. Deterministic: the dead
    run is planted, not raced."""
    import subprocess
    import sys

    from neuronxa_ray.config import load_job
    from neuronxa_ray.execution import RunOptions, run_jobs

    job = load_job(_job(tmp_path, model_dir, data_dir))
    run_jobs([job], RunOptions(progress=False))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as a SIGKILLed driver's
    lake = Lake(job.lake)
    lease = lake.acquire("tiny", "main", "fingerprint-of-the-dead-run", "dead-run")
    record = json.loads(lake.storage.read_bytes(lease.path))
    lake.storage.write_bytes(lease.path, json.dumps({**record, "pid": dead.pid}).encode())
    temp = tmp_path / "lake" / Path(lake.language_file("matches", "tiny", "main", "fra", "eng")).parent / ".x.tmp"
    temp.write_bytes(b"half")
    assert {p.kind for p in lake.check()} == {"stale-lease", "temporary"}
    assert run_jobs([job], RunOptions(progress=False)).n_units == 0  # nothing to do ...
    assert lake.check() == []  # ... and nothing left behind
