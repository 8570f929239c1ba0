"""The whole pipeline on local Ray with a tiny model saved to disk: lake contents against the reference."""

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from reference import cosine_matrix, mutual_nn_score, reference_states, retrieval_accuracy
from run_helpers import in_process_actor, run_job
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.config import job_from_dict
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution import RunOptions, run_jobs
from neuronxa_ray.lake import Lake
from neuronxa_ray.model.load import load_model
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.query import connect


def _margin(C) -> float:
    """How far the reference's hit decisions are from a tie (float32 noise must not be able to flip them)."""
    n = len(C)
    gaps = [
        abs(C[i][i] - C[a][b])
        for i in range(n)
        for a, b in [(i, j) for j in range(n) if j != i] + [(j, i) for j in range(n) if j != i]
    ]
    return min(gaps)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    save_tiny("llama", root / "model", seed=3)
    data = root / "data"
    data.mkdir()
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    raw = {
        "model": str(root / "model"),
        "name": "tiny-llama",
        "data": {"path": str(data)},
        "pivot": "eng",
        "n_sentences": 6,
        "batch_size": 4,
        "lake": str(root / "lake"),
        "device": "cpu",
        "store_similarity": True,  # the full matrices too, so the cell-based path can check the device's decisions
        "state_dtype": "float32",  # stored states compared with the float64 reference at float32 tolerance
    }
    return root, raw


def test_ray_pipeline_matches_reference(ray_session, tiny_job):
    _, raw = tiny_job
    job = job_from_dict(raw)
    runs = run_job(job, progress=False)
    assert len(runs) == 1 and runs[0]["n_languages_computed"] == 3 and runs[0]["device"] == "cpu"

    lm = load_model(ModelSpec(model=raw["model"], dtype="float64"))
    ref = {lang: reference_states(lm.model, lm.tokenizer, lm.hook_modules, TEXTS[lang]) for lang in TEXTS}
    lake = Lake(raw["lake"])
    for lang in TEXTS:  # stored states and counters
        stored = lake.read_states("tiny-llama", "main", lang)
        for method, arr in stored.items():
            np.testing.assert_allclose(arr, ref[lang][0][method], rtol=1e-4, atol=1e-5 * np.abs(arr).max())
    con = connect(raw["lake"])
    counts = con.execute("SELECT lang, layer, neuron, n_active, n_tokens FROM neuron_counts").fetchall()
    for lang, layer, neuron, n_active, n_tokens in counts:
        assert abs(n_active - ref[lang][1][layer, neuron]) <= 1 and n_tokens == ref[lang][3]

    scores = con.execute("SELECT method, lang, layer, score FROM alignment").fetchall()
    retrieval = {
        r[:4]: r[4] for r in con.execute("SELECT method, lang, layer, direction, accuracy FROM retrieval").fetchall()
    }
    assert len(scores) == 2 * (2 * 2 + 2 * 3)  # 2 languages x (nas, nav over 2 blocks; hidden x2 over 3 states)
    checked = 0
    for method, lang, layer, score in scores:
        C = cosine_matrix(ref["eng"][0][method][:, layer], ref[lang][0][method][:, layer])
        if _margin(C) < 1e-4:
            continue  # a near-tie: float32 may decide it either way
        checked += 1
        assert score == pytest.approx(mutual_nn_score(C), abs=1e-12), (method, lang, layer)
        for d in ("pivot_to_lang", "lang_to_pivot"):
            assert retrieval[(method, lang, layer, d)] == pytest.approx(retrieval_accuracy(C, d), abs=1e-12)
    assert checked >= len(scores) // 2
    # the device's per-sentence decisions (matches) equal the cell-based SQL over the stored matrices, bit for bit
    q = "SELECT {} FROM {} ORDER BY ALL"
    cols = "pivot_lang, lang, method, layer, sentence, diagonal, row_rival, column_rival, row_hit, column_hit"
    assert (
        con.execute(q.format(cols, "mutual_nn")).fetchall()
        == con.execute(q.format(cols, "mutual_nn_from_cells")).fetchall()
    )
    assert (
        con.execute(q.format("*", "alignment")).fetchall()
        == con.execute(q.format("*", "alignment_from_cells")).fetchall()
    )
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_rerun_skips_completed_languages_and_resumes_missing_ones(ray_session, tiny_job):
    _, raw = tiny_job
    job = job_from_dict(raw)
    lake = Lake(raw["lake"])
    if not lake.is_done("tiny-llama", "main", "eng", "fra", "x") and not list(Path(lake.uri).glob("_done/**/*.json")):
        run_job(job, progress=False)
    before = connect(raw["lake"]).execute("SELECT method, lang, layer, score FROM alignment ORDER BY ALL").fetchall()
    assert run_job(job, progress=False) == []  # everything complete: nothing recomputed
    next(Path(lake.uri).glob("_done/**/lang=fra.json")).unlink()  # as if the run died before fra finished
    runs = run_job(job, progress=False)
    assert [r["n_languages_computed"] for r in runs] == [1]  # only fra; the pivot's states came from the lake
    after = connect(raw["lake"]).execute("SELECT method, lang, layer, score FROM alignment ORDER BY ALL").fetchall()
    assert after == before
    changed = job_from_dict({**raw, "n_sentences": 5})  # a different setting is not "done"
    assert [r["n_languages_computed"] for r in run_job(changed, progress=False)] == [3]


def test_identical_states_are_ties_and_never_hit(ray_session, tmp_path):
    save_tiny("gpt2", tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    job = job_from_dict(
        {
            "model": str(tmp_path / "model"),
            "data": str(data),
            "lake": str(tmp_path / "lake"),
            "max_length": 1,
            "n_sentences": 6,
            "device": "cpu",
        }
    )
    runs = run_job(job, progress=False)  # one token per sentence (BOS only): identical states, every pair a tie
    assert runs[0]["n_languages_computed"] == 3
    con = connect(tmp_path / "lake")
    assert con.execute("SELECT count(*), max(score) FROM alignment").fetchone() == (2 * (2 + 2 + 3 + 3), 0.0)


def test_bad_data_path_fails_before_ray_starts(tmp_path):
    job = job_from_dict({"model": "m", "data": str(tmp_path / "nope"), "lake": str(tmp_path / "lake")})
    with pytest.raises(NeuronxaError, match="does not exist"):
        run_job(job, progress=False)


def test_two_actors_share_the_pivot_and_agree_with_one(ray_session, tiny_job, tmp_path):
    """num_actors=2: the pivot runs on one actor, its states reach the other through the object store."""
    _, raw = tiny_job
    one = job_from_dict({**raw, "lake": str(tmp_path / "one"), "num_actors": 1})
    two = job_from_dict({**raw, "lake": str(tmp_path / "two"), "num_actors": 2})
    assert run_job(one, progress=False)[0]["num_actors"] == 1
    assert run_job(two, progress=False)[0]["num_actors"] == 2
    q = "SELECT method, lang, layer, sentence, [diagonal, row_rival, column_rival] FROM matches ORDER BY ALL"
    a = connect(tmp_path / "one").execute(q).fetchall()
    b = connect(tmp_path / "two").execute(q).fetchall()
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b, strict=True):
        assert ra[:4] == rb[:4]
        np.testing.assert_allclose(ra[4], rb[4], rtol=1e-5, atol=1e-6)  # 1 vs 2 threads: float32 order


def test_background_write_errors_surface_with_the_language(tmp_path, monkeypatch):
    from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings

    save_tiny("llama", tmp_path / "model")
    worker = LanguageWorker(ModelSpec(model=str(tmp_path / "model")), WorkerSettings(lake=str(tmp_path / "lake")))
    task = LanguageTask("tiny", "main", "eng", "eng", ["0", "1"], TEXTS["eng"][:2], "fp")

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Lake, "write", disk_full)
    worker.process(task)  # returns at once: the write runs in the background
    with pytest.raises(RuntimeError, match="writing language 'eng' to the lake failed: disk full"):
        worker.flush()
    assert not Lake(tmp_path / "lake").is_done("tiny", "main", "eng", "eng", "fp")


def test_every_language_pair_from_one_forward_pass_each(ray_session, tiny_job, tmp_path):
    """pivots: all: each language runs once; the pair matrix covers every (pivot, language) and its eng row is
    exactly the single-pivot run's scores."""
    _, raw = tiny_job
    single = job_from_dict({**raw, "lake": str(tmp_path / "single")})
    pairs = job_from_dict({**raw, "lake": str(tmp_path / "pairs"), "pivots": "all"})
    assert len(run_job(single, progress=False)) == 1
    report = run_jobs([pairs], RunOptions(progress=False))
    assert report.ok and report.n_units == 3  # one forward pass per language
    con = connect(tmp_path / "pairs")
    got = con.execute("SELECT DISTINCT pivot_lang, lang FROM alignment_matrix ORDER BY ALL").fetchall()
    assert got == [(p, lang) for p in ("deu", "eng", "fra") for lang in ("deu", "eng", "fra") if p != lang]
    q = "SELECT method, lang, score_mean FROM {} WHERE pivot_lang = 'eng' ORDER BY ALL"
    assert (
        con.execute(q.format("alignment_matrix")).fetchall()
        == connect(tmp_path / "single").execute(q.format("alignment_summary")).fetchall()
    )
    assert run_jobs([pairs], RunOptions(progress=False)).n_units == 0  # nothing left, no pair redone
    assert Lake(tmp_path / "pairs").check() == []


def test_a_causal_lm_checkpoint_loads_without_a_weights_report(tmp_path, capfd):
    import transformers
    from tiny_models import CONFIGS, make_tokenizer

    config = CONFIGS["llama"]()
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "clm")
    make_tokenizer().save_pretrained(tmp_path / "clm")
    capfd.readouterr()
    lm = load_model(ModelSpec(model=str(tmp_path / "clm")))
    captured = capfd.readouterr()
    assert len(lm.blocks) == 2
    assert "lm_head" not in captured.err + captured.out


def test_a_checkpoint_that_cannot_load_fails_alone_and_the_run_ends(ray_session, tiny_job, tmp_path):
    """One actor, two checkpoints, the second's weights broken: switching to it must not lose the first
    checkpoint's last write, and the run must end (not wait forever) with the second's units failed."""
    import shutil

    _, raw = tiny_job
    broken = tmp_path / "broken"
    shutil.copytree(raw["model"], broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    job = job_from_dict(
        {**raw, "lake": str(tmp_path / "lake"), "num_actors": 1, "checkpoints": [raw["model"], str(broken)]}
    )
    report = run_jobs([job], RunOptions(progress=False))
    assert sorted(f.lang for f in report.failed) == ["deu", "eng", "fra"]
    assert {f.checkpoint for f in report.failed} == {"broken"}
    con = connect(tmp_path / "lake")
    done = con.execute("SELECT checkpoint, n_done, n_failed FROM checkpoint_status ORDER BY 1").fetchall()
    assert done == [("broken", 0, 3), ("model", 3, 0)]
    assert con.execute("SELECT count(DISTINCT lang) FROM alignment WHERE checkpoint = 'model'").fetchone() == (2,)


def test_attempts_time_what_each_unit_did(ray_session, tiny_job, tmp_path):
    """attempts: started_at when the unit's extraction began, extracted_at when its forward passes ended,
    finished_at when its write ended — on the worker's clock, not when the driver heard of it (one unit later)."""
    from fault_workers import slow_worker

    _, raw = tiny_job
    (tmp_path / "signals").mkdir()
    job = job_from_dict({**raw, "lake": str(tmp_path / "lake"), "store_similarity": False})
    # each unit pauses 2 s before it starts: the previous unit's (small) write ends within that pause
    report = run_jobs([job], RunOptions(progress=False, worker_factory=slow_worker(str(tmp_path / "signals"), 2.0)))
    assert report.ok and report.n_units == 3
    rows = (
        connect(tmp_path / "lake")
        .execute("SELECT lang, started_at, extracted_at, finished_at FROM attempts WHERE status = 'ok' ORDER BY 2")
        .fetchall()
    )
    assert len(rows) == 3 and rows[0][0] == "eng"
    for _, started, extracted, finished in rows:
        assert started <= extracted <= finished
    for before, after in itertools.pairwise(rows):
        assert before[3] <= after[1], (before, after)  # written before the next unit began


def test_a_write_cut_by_a_lost_actor_leaves_nothing_behind(ray_session, tiny_job, tmp_path):
    """An actor lost in the middle of a write (its node gone) leaves the atomic writer's temporary file; the unit is
    retried on a new actor, and the finished run removes the temporary file before it lets its lease go, so `lake
    check` finds nothing (the cluster test's node loss found it, once in a quiet `make test`)."""
    from fault_workers import cut_write_worker

    _, raw = tiny_job
    lake = tmp_path / "lake"
    job = job_from_dict({**raw, "lake": str(lake)})
    factory = cut_write_worker(str(tmp_path / "died"), str(lake), "fra")
    report = run_jobs([job], RunOptions(progress=False, worker_factory=factory))
    assert report.ok and (tmp_path / "died").exists()
    con = connect(lake)
    statuses = con.execute("SELECT status FROM attempts WHERE lang = 'fra' ORDER BY attempt").fetchall()
    assert [s for (s,) in statuses] == ["lost", "ok"]
    assert [p.name for p in lake.rglob("*.tmp")] == []
    assert Lake(lake).check() == []
    assert con.execute("SELECT count(DISTINCT lang) FROM alignment").fetchone() == (2,)


def test_idle_actors_are_kept_for_the_next_run_and_die_with_the_block(ray_session, tiny_job, tmp_path):
    """Within keep_actors() (this pytest process runs in one), the next run takes the idle actor of the previous one
    (the same process) and computes what a new actor computes; a kept actor that died is replaced by a new one; actors
    of another shape are not reused (and no longer kept); a run's worker factory does not outlive it; the block's
    end kills what it keeps."""
    import os
    import signal

    import ray
    from fault_workers import slow_worker

    from neuronxa_ray.execution.kept import kept

    _, raw = tiny_job
    block = kept()
    assert block is not None

    def run(name: str, factory=None, **fields) -> tuple[list, list[str], list[int]]:
        job = job_from_dict({**raw, "lake": str(tmp_path / name), **fields})
        failed = [f.lang for f in run_jobs([job], RunOptions(progress=False, worker_factory=factory)).failed]
        (handles,) = [hs for hs in block.idle.values() if hs]  # one shape kept
        rows = connect(job.lake).execute("SELECT * FROM alignment WHERE lang = 'fra' ORDER BY ALL").fetchall()
        return rows, failed, sorted(info["pid"] for info in ray.get([h.ready.remote() for h in handles], timeout=60))

    first, _, [pid] = run("a")  # on an actor an earlier test of this process left, or a new one
    base = block.reused
    again, _, [same] = run("b")
    assert (block.reused - base, same) == (1, pid) and again == first
    os.kill(pid, signal.SIGKILL)  # a kept actor lost while idle
    after_loss, _, [new] = run("c")
    assert block.reused - base == 1 and new != pid and after_loss == first
    two, _, pids = run("d", num_actors=2)  # another shape: 2 actors of 1 CPU
    assert block.reused - base == 1 and 1 <= len(pids) <= 2 and new not in pids and two == first
    (tmp_path / "signals").mkdir()
    failing = slow_worker(str(tmp_path / "signals"), 0.0, ("deu",))  # deu fails inside the actor, which lives on
    with_factory, failed, [one] = run("e", failing)
    assert failed == ["deu"] and with_factory == first
    plain, failed, [same] = run("f")  # the same actor, back to the real worker
    assert failed == [] and same == one and plain == first and block.reused - base == 2
    handles = [h for hs in block.idle.values() for h in hs]
    block.release()

    def died(handle) -> bool:  # ray.kill is asynchronous: a call sent just after it may still be answered (CI saw one)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ray.get(handle.ready.remote(), timeout=10)
            except ray.exceptions.ActorDiedError:
                return True
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                pass
            time.sleep(0.2)
        return False

    assert handles and all(died(handle) for handle in handles)


def test_a_kept_actor_frees_memory_after_a_load_that_failed_and_only_when_something_was_loaded(monkeypatch):
    """reset() collects garbage (and empties the CUDA cache) when the actor loaded something since the last reset,
    a load that raised part-way included (it may have allocated before it failed), and not otherwise (0.15 s of CPU
    each time with torch and transformers loaded)."""
    import gc

    from neuronxa_ray.execution.actor import Actor

    class Failing:
        def __init__(self, *args, **kwargs):
            self.buffer = bytearray(1 << 20)  # allocated, then the load fails
            raise OSError("weights cut short")

    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    monkeypatch.setattr(Actor, "ready", lambda self: {})
    actor = in_process_actor(Actor, 1, Failing)
    actor.reset(Failing)
    assert collected == []  # nothing loaded yet
    with pytest.raises(OSError, match="cut short"):
        actor.warm(0, None, None)
    assert actor.worker is None
    actor.reset(Failing)
    assert collected == [1]
    actor.reset(Failing)
    assert collected == [1]  # nothing new since


def test_an_actor_slow_to_start_is_waited_for_not_called_unplaceable(ray_session, tiny_job, tmp_path, caplog):
    """placement_timeout_s bounds the wait for a place: an actor that has one (a worker process) but is slower to
    start than that (torch's imports on a busy machine: a suite run beside another failed this way at 60 s) is
    waited for, and the run completes. Unplaceable actors still fail in time (test_cluster)."""
    import logging

    from fault_workers import slow_start_worker

    from neuronxa_ray.execution.kept import kept

    kept().release()  # a kept actor has started already
    _, raw = tiny_job
    job = job_from_dict({**raw, "lake": str(tmp_path / "lake"), "placement_timeout_s": 30})
    with caplog.at_level(logging.INFO, logger="neuronxa_ray.execution.pool"):
        report = run_jobs([job], RunOptions(progress=False, worker_factory=slow_start_worker(45.0)))
    assert report.ok and report.n_units == 3
    assert "1 actor(s) placed but still starting after 30s" in caplog.text


def test_the_run_s_leases_stay_alive_while_its_actors_start(monkeypatch):
    """A long start-up (the placement limit, then STARTUP_TIMEOUT_S for actors placed but still starting) must not let
    the run's leases go stale, which would let another run take its checkpoints: the pool calls the heartbeat while
    it waits, and an actor placed that never starts is named as such."""
    import time

    from neuronxa_ray.execution import pool as pool_module
    from neuronxa_ray.execution.state import Slot

    class NeverStarts:  # ray.wait on actors that never answer
        def wait(self, refs, num_returns, timeout):
            time.sleep(timeout)
            return [], refs

    monkeypatch.setattr(pool_module, "RENEW_S", 0.05)
    monkeypatch.setattr(pool_module, "STARTUP_TIMEOUT_S", 0.3)
    monkeypatch.setattr(pool_module, "starting", lambda ray, handle: True)  # placed: a worker process, starting
    pool = pool_module.ActorPool.__new__(pool_module.ActorPool)
    pool.ray, pool.timeout_s, pool.slots = NeverStarts(), 0.3, []
    pool._starting = {"ref": Slot(id=0, handle=None)}
    beats = []
    with pytest.raises(NeuronxaError, match=r"1 actor\(s\) placed but not started within 0.6s"):
        pool.wait_placed(lambda: beats.append(time.monotonic()))
    assert len(beats) >= 10 and max(b - a for a, b in itertools.pairwise(beats)) < 0.2
