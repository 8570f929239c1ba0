"""Interventions in job files: the neuron sets a job asks for, taken from the lake after the baseline, evaluated as
units of their own (scheduled, retried, resumed, fingerprinted), and checked against an independent float64
reference: a plain Hugging Face causal LM, one sentence at a time, the activation zeroed by LAPE's `index_fill_`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from reference import cosine_matrix, mutual_nn_score, reference_states
from run_helpers import in_process_actor
from test_interventions import lape_zeroing, plain_nll
from tiny_models import TEXTS, save_tiny, save_tiny_causal

from neuronxa_ray.cli import main
from neuronxa_ray.compute.interventions import NeuronSet
from neuronxa_ray.config import job_from_dict
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution import RunOptions, run_jobs
from neuronxa_ray.model.load import attach, load_model
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.query import connect

INTERVENTIONS = [
    {"off": "lape", "of": "fra"},
    {"off": "random", "like": "fra", "seed": 0},
    {"off": "lape", "of": "all"},
    "none",
]
FILE_PAIRS = [(layer, n) for layer in (0, 1) for n in range(0, 64, 3)]  # a third of the neurons: a large effect


def _job(root, **more) -> dict:
    data = root / "data"
    data.mkdir(exist_ok=True)
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    pairs = root / "neurons.csv"
    pairs.write_text("layer,neuron\n" + "".join(f"{layer},{n}\n" for layer, n in FILE_PAIRS))
    raw = {
        "model": str(root / "model"),
        "name": "tiny",
        "data": {"path": str(data)},
        "n_sentences": 6,
        "batch_size": 4,
        "lake": str(root / "lake"),
        "device": "cpu",
        "state_dtype": "float32",
        "interventions": [*INTERVENTIONS, {"off": "file", "path": str(pairs)}],
    }
    return raw | more


@pytest.fixture(scope="module")
def evaluated(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("interventions")
    save_tiny_causal("llama", root / "model", seed=3)
    raw = _job(root)
    report = run_jobs([job_from_dict(raw)], RunOptions(progress=False))
    assert not report.failed, report.failed
    return root, raw, report


def _sets(con, d_ff: int = 64, n_layers: int = 2) -> dict[str, NeuronSet]:
    rows = con.execute("SELECT lang, layer, neuron FROM language_specific_neurons WHERE model = 'tiny'").fetchall()
    lape = {}
    for lang, layer, neuron in rows:
        lape.setdefault(lang, []).append((layer, neuron))
    fra = NeuronSet.from_pairs(lape.get("fra", []), n_layers, d_ff)
    return {
        "lape:fra": fra,
        "random:fra:seed0": NeuronSet.random_like(fra, d_ff, 0),
        "lape:all": NeuronSet.from_pairs([p for v in lape.values() for p in v], n_layers, d_ff),
        "file:neurons.csv": NeuronSet.from_pairs(FILE_PAIRS, n_layers, d_ff),
        "none": NeuronSet.empty(n_layers),
    }


def test_every_intervention_is_a_unit_per_language_with_the_baseline(evaluated):
    _, raw, report = evaluated
    con = connect(raw["lake"])
    rows = con.execute(
        "SELECT model, intervention, n_neurons, count(*) FROM perplexity_summary GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    sets = _sets(con)
    assert sets["lape:fra"].size() > 0 and sets["lape:all"].size() >= sets["lape:fra"].size()  # 1% of 128: tiny
    expected = [
        ("tiny" if name == "none" else f"tiny [off {name}]", name, sets[name].size(), 3) for name in sorted(sets)
    ]
    assert sorted(rows) == sorted(expected)
    assert report.n_units == 3 * 5  # (none + 4 interventions) x 3 languages
    assert report.loads == 2  # the baseline, then one load serving every intervention of the checkpoint
    # the random control has as many neurons in each layer as the set it copies, and other ones
    assert sets["random:fra:seed0"].per_layer_counts() == sets["lape:fra"].per_layer_counts()
    # intervention_effect: one row per intervention and language, against `none`
    got = con.execute(
        "SELECT intervention, lang, perplexity_ratio, perplexity, perplexity_none FROM intervention_effect"
    ).fetchall()
    assert len(got) == 4 * 3
    for _, _, ratio, ppl, ppl_none in got:
        assert ratio == pytest.approx(ppl / ppl_none, rel=1e-12)
    matrix = con.execute("SELECT kind, switched_off, lang FROM intervention_matrix").fetchall()
    assert sorted(matrix) == sorted([(k, "fra", lang) for k in ("lape", "random") for lang in TEXTS])


def test_perplexity_and_scores_under_intervention_equal_the_float64_reference(evaluated):
    """Per sentence NLL sums (float32 fast path against the float64 reference: <= 1e-3 relative) and per-layer
    mutual-NN scores (exact, away from near-ties) of every intervention, its pivot computed under it too."""
    root, raw, _ = evaluated
    con = connect(raw["lake"])
    causal = transformers.AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float64).eval()
    tokenizer = load_model(ModelSpec(model=raw["model"]), with_tokenizer=True).tokenizer
    plain = attach(causal.base_model, tokenizer, ModelSpec(model="ref"), torch.device("cpu"), torch.float64)
    checked = 0
    for name, neurons in _sets(con).items():
        model = "tiny" if name == "none" else f"tiny [off {name}]"
        ref_states = {}
        with lape_zeroing(plain.hook_modules, neurons):
            for lang, texts in TEXTS.items():
                ref_nll, ref_n = plain_nll(causal, tokenizer, texts)
                got = con.execute(
                    "SELECT nll_sum, n_predicted FROM perplexity WHERE model = ? AND lang = ? ORDER BY sentence",
                    [model, lang],
                ).fetchall()
                np.testing.assert_array_equal([g[1] for g in got], ref_n)
                assert np.max(np.abs(np.array([g[0] for g in got]) - ref_nll) / np.abs(ref_nll)) <= 1e-3
                ref_states[lang] = reference_states(plain.model, tokenizer, plain.hook_modules, texts)[0]
        scores = con.execute("SELECT method, lang, layer, score FROM alignment WHERE model = ?", [model]).fetchall()
        assert len(scores) == 2 * (2 * 2 + 2 * 3)
        for method, lang, layer, score in scores:
            C = cosine_matrix(ref_states["eng"][method][:, layer], ref_states[lang][method][:, layer])
            d = np.diag(C)
            off = C - np.diag(np.full(len(d), np.inf))
            if np.min(np.abs(d - np.maximum(off.max(0), off.max(1)))) < 1e-4:
                continue  # a near-tie: float32 may decide it either way
            checked += 1
            assert score == pytest.approx(mutual_nn_score(C), abs=1e-12), (name, method, lang, layer)
    assert checked >= 40


def test_a_rerun_computes_nothing_and_a_changed_set_recomputes_only_its_variant(evaluated):
    root, raw, _ = evaluated
    report = run_jobs([job_from_dict(raw)], RunOptions(progress=False))
    assert report.n_units == 0 and not report.failed
    (root / "neurons.csv").write_text("layer,neuron\n0,3\n1,9\n")
    report = run_jobs([job_from_dict(raw)], RunOptions(progress=False))
    assert not report.failed and report.n_units == 3
    assert {r["model"] for r in report.runs} == {"tiny [off file:neurons.csv]"}
    con = connect(raw["lake"])
    n = con.execute("SELECT DISTINCT n_neurons FROM perplexity WHERE intervention = 'file:neurons.csv'").fetchall()
    assert n == [(2,)]


def test_run_prints_the_intervention_table(evaluated, capsys):
    _, raw, _ = evaluated
    job = raw["lake"] + "/../job.yaml"
    import yaml

    with open(job, "w") as f:
        yaml.safe_dump(raw, f)
    query = "SELECT * FROM perplexity_summary ORDER BY model, lang"
    before = connect(raw["lake"]).execute(query).fetchall()
    assert main(["run", job, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert main(["lake", "compact", "--lake", raw["lake"]]) == 0  # perplexity too: one file per checkpoint
    from neuronxa_ray.lake import Lake

    files = sorted(Path(p).name for p in Lake(raw["lake"]).view_files().files["perplexity"])  # what views read
    assert len(files) == 5 and all(name.startswith("compacted-") for name in files), files
    assert connect(raw["lake"]).execute(query).fetchall() == before
    assert "neurons switched off" in out
    header = next(line.split() for line in out.splitlines() if line.split()[:1] == ["lang"] and "lape:fra" in line)
    assert header[1:] == sorted(["file:neurons.csv", "lape:all", "lape:fra", "random:fra:seed0"])


def test_a_failed_unit_of_an_intervention_is_retried_on_a_multi_checkpoint_job(ray_session, tmp_path):
    """Two checkpoints x (none + 1 intervention) x 3 languages through the same scheduler; the first attempt of one
    intervention unit dies with its actor and is retried; a rerun computes nothing."""
    for name in ("step-1", "step-2"):
        save_tiny_causal("llama", tmp_path / name, seed=int(name[-1]))
    raw = _job(tmp_path, interventions=[{"off": "lape", "of": "deu"}])
    raw["checkpoints"] = [{"path": str(tmp_path / n), "step": i + 1} for i, n in enumerate(("step-1", "step-2"))]
    factory = _dies_once(str(tmp_path / "died"), "tiny [off lape:deu]", "step-2", "fra")
    report = run_jobs([job_from_dict(raw)], RunOptions(progress=False, worker_factory=factory))
    assert not report.failed, report.failed
    assert report.n_units == 2 * 2 * 3
    assert (tmp_path / "died").exists()
    con = connect(raw["lake"])
    steps = con.execute("SELECT DISTINCT step FROM intervention_matrix ORDER BY step").fetchall()
    assert steps == [(1,), (2,)]
    attempts = con.execute(
        "SELECT max(attempt) FROM attempts WHERE model = 'tiny [off lape:deu]' AND checkpoint = 'step-2' "
        "AND lang = 'fra'"
    ).fetchone()
    assert attempts == (2,)
    assert run_jobs([job_from_dict(raw)], RunOptions(progress=False)).n_units == 0


def _dies_once(flag: str, model: str, checkpoint: str, lang: str):
    """A worker factory whose actor process exits on the first attempt at one unit."""
    import os
    from pathlib import Path

    from neuronxa_ray.worker.worker import LanguageWorker

    class DiesOnce(LanguageWorker):
        def process(self, task, *args, **kwargs):
            if (task.model_name, task.checkpoint, task.lang) == (model, checkpoint, lang) and not Path(flag).exists():
                Path(flag).touch()
                os._exit(1)
            return super().process(task, *args, **kwargs)

    return DiesOnce


# ---- the job file: every mistake one line, before anything runs


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"off": "lap", "of": "fra"}, "must be none, {off: lape"),
        ({"off": "lape"}, "interventions[0].of"),
        ({"off": "lape", "of": "fra", "like": "deu"}, "unknown field interventions[0].'like'"),
        ({"off": "random", "like": "fra", "seed": -1}, "seed"),
        ({"off": "random", "like": "fra", "seed": True}, "seed"),
        ({"off": "file", "path": "/nonexistent/n.parquet"}, "must be an existing Parquet or CSV file"),
        ({"off": "lape", "of": "xx"}, "'xx' is not a language of this job"),
        ("lape", "must be none, {off: lape"),
    ],
)
def test_bad_interventions_are_one_line_errors(tmp_path, entry, message):
    raw = _job(tmp_path, languages=["fra", "deu"], interventions=[entry])
    with pytest.raises(NeuronxaError, match=message.replace("[", r"\[").replace("{", r"\{")) as e:
        job_from_dict(raw)
    assert "\n" not in str(e.value)


def test_the_issue_s_yaml_reads_as_written(tmp_path):
    """`off` is a boolean in YAML 1.1 (PyYAML reads `{off: lape}` as `{False: 'lape'}`): the job file still means
    what it says."""
    from neuronxa_ray.config import load_job

    (tmp_path / "job.yaml").write_text(
        "model: m\ndata: {path: d}\ninterventions: [{off: lape, of: fra}, {off: random, like: fra, seed: 3}, none]\n"
    )
    job = load_job(tmp_path / "job.yaml")
    assert [i.label for i in job.interventions] == ["lape:fra", "random:fra:seed3"]


def test_two_interventions_stored_under_one_name_are_refused(tmp_path):
    raw = _job(tmp_path, interventions=[{"off": "lape", "of": "fra"}, {"off": "lape", "of": "fra"}])
    with pytest.raises(NeuronxaError, match="is stored as 'lape:fra' like an earlier entry"):
        job_from_dict(raw)


def test_an_unknown_language_is_refused_when_planning(tmp_path):
    """languages left out of the job: the corpus decides, before Ray starts."""
    save_tiny_causal("llama", tmp_path / "model")
    raw = _job(tmp_path, interventions=[{"off": "random", "like": "swh"}])
    with pytest.raises(NeuronxaError, match="'swh' is not a language of the job"):
        run_jobs([job_from_dict(raw)], RunOptions(progress=False))


def test_a_checkpoint_without_an_lm_head_fails_its_units_clearly(ray_session, tmp_path):
    """A base model saved without its output layer: transformers would start the head from random weights, so
    every perplexity would be noise; the units fail naming why, and nothing is written for them."""
    save_tiny("llama", tmp_path / "model")
    raw = _job(tmp_path, interventions=[{"off": "lape", "of": "fra"}], max_attempts=1)
    report = run_jobs([job_from_dict(raw)], RunOptions(progress=False))
    assert report.failed and all("holds no language-model head" in f.error for f in report.failed if f.attempts)
    assert connect(raw["lake"]).execute("SELECT count(*) FROM perplexity").fetchone() == (0,)


def test_neuron_files_with_bad_rows_fail_the_intervention_naming_them(ray_session, evaluated, tmp_path):
    _, raw, _ = evaluated
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"layer": [0, 7], "neuron": [1, 2]}), bad)
    nocols = tmp_path / "nocols.csv"
    nocols.write_text("l,n\n0,1\n")
    raw = raw | {"interventions": [{"off": "file", "path": str(bad)}, {"off": "file", "path": str(nocols)}]}
    report = run_jobs([job_from_dict(raw)], RunOptions(progress=False))
    errors = {f.lang: f.error for f in report.failed}
    assert "layer 7" in errors["(off file:bad.parquet)"] or "7" in errors["(off file:bad.parquet)"]
    assert "needs columns layer and neuron" in errors["(off file:nocols.csv)"]


def test_the_report_draws_the_matrix_and_keeps_interventions_out_of_other_sections(evaluated):
    pytest.importorskip("altair")
    from neuronxa_ray.report import build_report

    _, raw, _ = evaluated
    report = build_report(raw["lake"])
    (sec,) = [s for s in report.sections if s.id == "interventions"]
    (fig,) = sec.figures
    assert fig.title == "Switched off × evaluated: tiny @ main" and fig.n_rows == 2 * 3
    layers = [f.title for s in report.sections if s.id != "interventions" for f in s.figures]
    assert layers and not any("[off " in t for t in layers)
    named = build_report(raw["lake"], models=["tiny [off lape:fra]"])
    assert any("[off lape:fra]" in f.title for s in named.sections for f in s.figures)


def test_an_actor_serves_every_intervention_of_a_checkpoint_with_one_load():
    """Plans with the same weights and extractor settings (a checkpoint and its interventions) share the loaded
    model: no second load, no prefetch of what is loaded; other weights load as before."""
    from neuronxa_ray.execution.actor import Actor

    made = []

    class Fake:
        def __init__(self, spec, settings, **_):
            self.spec, self.settings, self.retargeted = spec, settings, []
            made.append(spec)

        @staticmethod
        def prefetch(spec, settings):
            raise AssertionError("prefetched weights the actor holds")

        def serves(self, spec, settings):
            return spec == self.spec

        def retarget(self, settings):
            self.retargeted.append(settings)

        def collect(self):
            return []

        def close(self):
            pass

    actor = in_process_actor(Actor, 1, Fake)
    actor.warm(0, "ckpt-1", "base")
    actor._prefetch(1, "ckpt-1", "off lape:fra")
    assert not actor.prefetched
    actor.warm(1, "ckpt-1", "off lape:fra")
    assert actor.loads == 1 and actor.loaded == 1 and actor.worker.retargeted == ["off lape:fra"]
    actor.warm(2, "ckpt-2", "base")
    assert actor.loads == 2 and made == ["ckpt-1", "ckpt-2"]
