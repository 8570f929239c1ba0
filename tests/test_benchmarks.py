"""import-benchmarks: plain tables and lm-evaluation-harness result files, task names, metrics, models; and the
correlation views over them (across languages and across training checkpoints) against scipy."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch
from lake_helpers import mark_complete

from neuronxa_ray.cli import main
from neuronxa_ray.compute.matching import match_stats
from neuronxa_ray.downstream.results import choose_metric, parse_task, read_lm_eval
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import SCHEMAS, Lake, matches_table, similarity_table
from neuronxa_ray.query import connect


def _group(task: str) -> str:
    return re.sub(r"_[a-z]{2,3}(_[A-Z][a-z]{3})?$", "", task)


def lm_eval_results(
    tasks: dict[str, dict], model="EleutherAI/pythia-160m", revision=None, date=1717000000.0, model_args=None
) -> dict:
    """A result file as lm-evaluation-harness 0.4.x writes it (results_<date>.json): per-task metrics keyed
    "<metric>,<filter>" with their "_stderr" twins and an alias, group aggregates, configs, versions, n-shot,
    higher_is_better, n-samples, config.model_args, model_name and the run's date."""
    args = (
        model_args if model_args is not None else f"pretrained={model}" + (f",revision={revision}" if revision else "")
    )
    groups = sorted({_group(t) for t in tasks if _group(t) != t})
    results = {}
    for group in groups:  # a group's aggregate row comes first, as lm-eval writes it
        members = [t for t in tasks if _group(t) == group]
        results[group] = {
            "acc,none": float(np.mean([tasks[t].get("acc,none", 0) for t in members])),
            "acc_stderr,none": 0.004,
            "alias": group,
        }
    for task, metrics in tasks.items():
        results[task] = {"alias": f" - {task}", **metrics}
    return {
        "results": results,
        "groups": {g: {"acc,none": results[g]["acc,none"], "acc_stderr,none": 0.004, "alias": g} for g in groups},
        "group_subtasks": {g: [t for t in tasks if _group(t) == g] for g in groups},
        "configs": {
            t: {
                "task": t,
                "dataset_path": "some/dataset",
                "output_type": "multiple_choice",
                "num_fewshot": 0,
                "metadata": {"version": 1.0},
            }
            for t in tasks
        },
        "versions": {t: 1.0 for t in tasks},
        "n-shot": {t: 0 for t in tasks},
        "higher_is_better": {t: {"acc": True, "acc_norm": True} for t in tasks},
        "n-samples": {t: {"original": 900, "effective": 900} for t in tasks},
        "config": {
            "model": "hf",
            "model_args": args,
            "model_num_parameters": 162322944,
            "model_dtype": "torch.float16",
            "model_revision": revision or "main",
            "batch_size": "auto",
            "batch_sizes": [64],
            "device": "cuda:0",
            "use_cache": None,
            "limit": None,
            "bootstrap_iters": 100000,
            "gen_kwargs": None,
            "random_seed": 0,
            "numpy_seed": 1234,
            "torch_seed": 1234,
            "fewshot_seed": 1234,
        },
        "git_hash": "c1d8795",
        "date": date,
        "pretty_env_info": "PyTorch version: 2.3.0",
        "transformers_version": "4.41.2",
        "upper_git_hash": None,
        "tokenizer_pad_token": ["<|endoftext|>", "0"],
        "tokenizer_eos_token": ["<|endoftext|>", "0"],
        "tokenizer_bos_token": ["<|endoftext|>", "0"],
        "eot_token_id": 0,
        "max_length": 2048,
        "task_hashes": {},
        "model_source": "hf",
        "model_name": model,
        "model_name_sanitized": model.replace("/", "__"),
        "system_instruction": None,
        "system_instruction_sha": None,
        "fewshot_as_multiturn": False,
        "chat_template": None,
        "chat_template_sha": None,
        "start_time": 1234.5,
        "end_time": 2345.6,
        "total_evaluation_time_seconds": "1111.1",
    }


TASKS = {
    "xnli_fr": {"acc,none": 0.481, "acc_stderr,none": 0.0100},
    "xnli_de": {"acc,none": 0.452, "acc_stderr,none": 0.0099},
    "xnli_zh": {"acc,none": 0.391, "acc_stderr,none": 0.0098},
    "belebele_fra_Latn": {
        "acc,none": 0.31,
        "acc_stderr,none": 0.015,
        "acc_norm,none": 0.32,
        "acc_norm_stderr,none": 0.015,
    },
    "belebele_zho_Hans": {
        "acc,none": 0.27,
        "acc_stderr,none": 0.015,
        "acc_norm,none": 0.28,
        "acc_norm_stderr,none": 0.015,
    },
    "hellaswag_fr": {"acc_norm,none": 0.35, "acc_norm_stderr,none": 0.005},  # only acc_norm
    "mgsm_direct_fr": {
        "exact_match,strict-match": 0.02,
        "exact_match_stderr,strict-match": "N/A",
        "exact_match,flexible-extract": 0.04,
        "exact_match_stderr,flexible-extract": 0.012,
    },
    "paws_de": {"acc,none": 0.55, "acc_stderr,none": 0.011},
    "arc_easy": {"acc,none": 0.43, "acc_stderr,none": 0.01},  # English, no language suffix: not imported
}


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def test_task_names_and_metric_choice():
    assert parse_task("belebele_fra_Latn") == ("belebele", "fra_Latn")
    assert parse_task("xnli_fr") == ("xnli", "fr") and parse_task("xstorycloze_es") == ("xstorycloze", "es")
    assert parse_task("arc_fr") == ("arc", "fr") and parse_task("m_mmlu_fr") == ("m_mmlu", "fr")
    assert parse_task("hellaswag_fr") == ("hellaswag", "fr") and parse_task("xcopa_it") == ("xcopa", "it")
    assert parse_task("pawsx_de") == ("pawsx", "de") == parse_task("paws_de")
    assert parse_task("mgsm_direct_fr") == ("mgsm_direct", "fr")
    for not_per_language in ("xnli", "arc_easy", "arc_challenge", "mmlu_professional_law", "wmt16_de_en", "hellaswag"):
        assert parse_task(not_per_language) is None, not_per_language
    assert choose_metric(TASKS["belebele_fra_Latn"]) == ("acc,none", 0.31)
    assert choose_metric(TASKS["hellaswag_fr"]) == ("acc_norm,none", 0.35)
    assert choose_metric(TASKS["mgsm_direct_fr"]) == ("exact_match,strict-match", 0.02)
    assert choose_metric(TASKS["mgsm_direct_fr"], "exact_match,flexible-extract") == (
        "exact_match,flexible-extract",
        0.04,
    )
    assert choose_metric(TASKS["belebele_fra_Latn"], "acc_norm") == ("acc_norm,none", 0.32)
    assert choose_metric({"f1,none": 0.7, "f1_stderr,none": 0.1, "alias": "x"}) == ("f1,none", 0.7)
    assert choose_metric({"acc,none": "N/A", "alias": "x"}) is None
    assert choose_metric({"exact_match,strict-match": 0.1, "exact_match,none": 0.2}) == ("exact_match,none", 0.2)


def test_import_lm_eval_directory(tmp_path):
    out = tmp_path / "lm_eval_out" / "EleutherAI__pythia-160m"
    _write(out / "results_2024-05-29T12-00-00.123456.json", lm_eval_results(TASKS))
    lake = tmp_path / "lake"
    assert main(["import-benchmarks", str(tmp_path / "lm_eval_out"), "--lake", str(lake)]) == 0
    table = pq.read_table(lake / "benchmarks" / "lm_eval_out.parquet")
    assert table.schema.equals(SCHEMAS["benchmarks"], check_metadata=False)
    rows = {(r["benchmark"], r["lang"]): r for r in table.to_pylist()}
    assert set(rows) == {
        ("xnli", "fr"),
        ("xnli", "de"),
        ("xnli", "zh"),
        ("belebele", "fra_Latn"),
        ("belebele", "zho_Hans"),
        ("hellaswag", "fr"),
        ("mgsm_direct", "fr"),
        ("pawsx", "de"),
    }
    assert rows[("xnli", "fr")]["value"] == 0.481 and rows[("hellaswag", "fr")]["metric"] == "acc_norm,none"
    assert rows[("belebele", "zho_Hans")]["lang_canonical"] == "zh" == rows[("xnli", "zh")]["lang_canonical"]
    assert rows[("pawsx", "de")]["task"] == "paws_de"
    assert all(r["model"] is None and r["checkpoint"] is None for r in rows.values())  # any model unless asked
    # --metric and --model: acc_norm where there is one, the stored model name as given
    assert (
        main(
            [
                "import-benchmarks",
                str(out),
                "--lake",
                str(lake),
                "--name",
                "norm",
                "--metric",
                "acc_norm",
                "--model",
                "pythia-160m",
            ]
        )
        == 0
    )
    norm = {(r["benchmark"], r["lang"]): r for r in pq.read_table(lake / "benchmarks" / "norm.parquet").to_pylist()}
    assert set(norm) == {("belebele", "fra_Latn"), ("belebele", "zho_Hans"), ("hellaswag", "fr")}
    assert norm[("belebele", "fra_Latn")]["value"] == 0.32 and {r["model"] for r in norm.values()} == {"pythia-160m"}


def test_lm_eval_files_of_several_models_and_reruns(tmp_path):
    root = tmp_path / "out"
    old = _write(root / "m__a" / "results_2024-01-01T00-00-00.json", lm_eval_results(TASKS, "org/a", date=1.0e9))
    newer = {**TASKS, "xnli_fr": {"acc,none": 0.5}}
    _write(root / "m__a" / "results_2024-02-01T00-00-00.json", lm_eval_results(newer, "org/a", date=1.1e9))
    rows = read_lm_eval(root / "m__a")
    assert len(rows) == 2 * 8
    lake = tmp_path / "lake"
    assert main(["import-benchmarks", str(root / "m__a"), "--lake", str(lake), "--name", "a"]) == 0
    got = {(r["benchmark"], r["lang"]): r["value"] for r in pq.read_table(lake / "benchmarks/a.parquet").to_pylist()}
    assert got[("xnli", "fr")] == 0.5 and len(got) == 8  # the newer run wins
    # two models under one directory: stored as "any model" they would collide
    _write(
        root / "m__b" / "results_2024-03-01T00-00-00.json",
        lm_eval_results(
            TASKS, "org/b", revision="step1000", model_args="pretrained=org/b,revision=step1000,dtype=float16"
        ),
    )
    with pytest.raises(NeuronxaError, match="several models"):
        main_raise(["import-benchmarks", str(root), "--lake", str(lake)])
    assert (
        main(
            [
                "import-benchmarks",
                str(root),
                "--lake",
                str(lake),
                "--name",
                "both",
                "--model",
                "@results",
                "--checkpoint",
                "@results",
            ]
        )
        == 0
    )
    both = pq.read_table(lake / "benchmarks/both.parquet").to_pylist()
    assert {(r["model"], r["checkpoint"]) for r in both} == {("org/a", None), ("org/b", "step1000")}
    assert len(both) == 16
    assert old.exists()


def main_raise(argv):
    """Run the command's function directly, so the ValueError reaches the test (main() prints it, returns 2)."""
    from neuronxa_ray.cli import COMMANDS, build_parser

    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def test_import_errors_name_the_problem(tmp_path):
    lake = str(tmp_path / "lake")
    with pytest.raises(NeuronxaError, match="does not exist"):
        main_raise(["import-benchmarks", str(tmp_path / "missing.csv"), "--lake", lake])
    bad = _write(tmp_path / "results.json", {"config": {}})
    with pytest.raises(NeuronxaError, match="no 'results' object"):
        main_raise(["import-benchmarks", str(bad), "--lake", lake])
    english = _write(tmp_path / "en" / "results.json", lm_eval_results({"arc_easy": TASKS["arc_easy"]}))
    with pytest.raises(NeuronxaError, match="no per-language task"):
        main_raise(["import-benchmarks", str(english), "--lake", lake])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeuronxaError, match="no lm-evaluation-harness result files"):
        main_raise(["import-benchmarks", str(tmp_path / "empty"), "--lake", lake])
    csv = tmp_path / "b.csv"
    csv.write_text("benchmark,lang,value\nxnli,fra,0.4\n")
    with pytest.raises(NeuronxaError, match="--metric applies"):
        main_raise(["import-benchmarks", str(csv), "--lake", lake, "--metric", "acc"])
    assert main(["import-benchmarks", str(csv), "--lake", lake, "--model", "m1"]) == 0
    row = pq.read_table(tmp_path / "lake" / "benchmarks" / "b.parquet").to_pylist()[0]
    assert (row["lang_canonical"], row["model"], row["checkpoint"]) == ("fr", "m1", None)


# ------------------------------------------------------------------------ correlations over the imported results

LANGS = ["cmn", "deu", "fra", "swh"]
CKPTS = {"step100": 100, "step200": 200, "step400": 400, "step800": 800, "step1600": 1600}


def _run_row(ckpt, step):
    row = {f.name: None for f in SCHEMAS["runs"]}
    row.update(
        run_id=f"r-{ckpt}",
        model="m",
        checkpoint=ckpt,
        step=step,
        pivot_lang="eng",
        languages=LANGS,
        n_languages=4,
        n_languages_computed=4,
        n_sentences=6,
        hook_site="act",
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        finished_at=dt.datetime(2026, 1, 1, 0, 1, tzinfo=dt.timezone.utc),
        wall_s=1.0,
        code_version="t",
        schema_version="2",
        config_json="{}",
    )
    return {k: [v] for k, v in row.items()}


@pytest.fixture(scope="module")
def training_lake(tmp_path_factory):
    """Model m at five checkpoints, four languages, random cosine matrices (6 sentences, 2 layers)."""
    root = tmp_path_factory.mktemp("training")
    lk = Lake(root)
    rng = np.random.default_rng(21)
    for ckpt, step in CKPTS.items():
        for lang in LANGS:
            mats = rng.normal(size=(2, 6, 6)) + np.eye(6) * rng.uniform(0, 3)
            lk.write(
                "similarity",
                similarity_table("m", ckpt, "eng", lang, {"nas": mats}),
                lk.language_file("similarity", "m", ckpt, lang, "eng"),
            )
            stats = {"nas": match_stats(torch.from_numpy(mats)).numpy()}  # as the worker does
            lk.write(
                "matches",
                matches_table("m", ckpt, "eng", lang, stats),
                lk.language_file("matches", "m", ckpt, lang, "eng"),
            )
        lk.write_run({k: v[0] for k, v in _run_row(ckpt, step).items()})
    mark_complete(lk)
    # lm-eval results per checkpoint (xnli in lm-eval's codes: zh, de, fr, sw)
    out = tmp_path_factory.mktemp("lm_eval")
    values = {}
    for ckpt in CKPTS:
        tasks = {}
        for code in ("zh", "de", "fr", "sw"):
            values[(ckpt, code)] = float(rng.integers(300, 700)) / 1000  # repeats make ties across checkpoints
            tasks[f"xnli_{code}"] = {"acc,none": values[(ckpt, code)], "acc_stderr,none": 0.01}
        _write(out / ckpt / "results.json", lm_eval_results(tasks, "org/m", revision=ckpt))
    assert main(["import-benchmarks", str(out), "--lake", str(root), "--model", "m", "--checkpoint", "@results"]) == 0
    return connect(root), values


def test_correlation_across_languages_per_checkpoint(training_lake):
    con, values = training_lake
    code = {"cmn": "zh", "deu": "de", "fra": "fr", "swh": "sw"}
    scores = {
        (c, lg): s for c, lg, s in con.execute("SELECT checkpoint, lang, score_mean FROM alignment_summary").fetchall()
    }
    rows = con.execute(
        "SELECT checkpoint, n_languages, pearson, spearman, pearson_p, spearman_p, pearson_ci_low,"
        " pearson_ci_high, spearman_ci_low, spearman_ci_high FROM correlation"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(CKPTS)
    for ckpt, n, pearson, spearman, pp, sp, plo, phi, slo, shi in rows:
        x = [scores[(ckpt, lg)] for lg in LANGS]
        y = [values[(ckpt, code[lg])] for lg in LANGS]
        assert n == 4  # zh met cmn, sw met swh
        ref = scipy.stats.pearsonr(x, y)
        srs = scipy.stats.spearmanr(x, y)
        ci = ref.confidence_interval()
        sci = scipy.stats.pearsonr(scipy.stats.rankdata(x), scipy.stats.rankdata(y)).confidence_interval()
        assert (pearson, spearman) == (pytest.approx(ref.statistic, abs=1e-12), pytest.approx(srs.statistic, abs=1e-12))
        assert (pp, sp) == (pytest.approx(ref.pvalue, rel=1e-9), pytest.approx(srs.pvalue, rel=1e-9))
        assert (plo, phi) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
        assert (slo, shi) == (pytest.approx(sci.low, abs=1e-12), pytest.approx(sci.high, abs=1e-12))


def test_correlation_over_training_per_language_and_mean(training_lake):
    con, values = training_lake
    code = {"cmn": "zh", "deu": "de", "fra": "fr", "swh": "sw"}
    scores = {
        (c, lg): s for c, lg, s in con.execute("SELECT checkpoint, lang, score_mean FROM alignment_summary").fetchall()
    }
    rows = con.execute(
        "SELECT lang, n_checkpoints, first_step, last_step, pearson, spearman, pearson_p, spearman_p,"
        " pearson_ci_low, spearman_ci_high FROM correlation_over_training WHERE benchmark = 'xnli'"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted([*LANGS, "*"])
    for lang, n, first, last, pearson, spearman, pp, sp, plo, shi in rows:
        langs = LANGS if lang == "*" else [lang]
        x = [np.mean([scores[(c, lg)] for lg in langs]) for c in CKPTS]
        y = [np.mean([values[(c, code[lg])] for lg in langs]) for c in CKPTS]
        assert (n, first, last) == (5, 100, 1600)
        ref, srs = scipy.stats.pearsonr(x, y), scipy.stats.spearmanr(x, y)
        sci = scipy.stats.pearsonr(scipy.stats.rankdata(x), scipy.stats.rankdata(y)).confidence_interval()
        assert pearson == pytest.approx(ref.statistic, abs=1e-12) and spearman == pytest.approx(
            srs.statistic, abs=1e-12
        )
        assert pp == pytest.approx(ref.pvalue, rel=1e-9) and sp == pytest.approx(srs.pvalue, rel=1e-9)
        assert plo == pytest.approx(ref.confidence_interval().low, abs=1e-12)
        assert shi == pytest.approx(sci.high, abs=1e-12)
    assert not math.isnan(rows[0][4])


def test_languages_view(training_lake):
    con, _ = training_lake
    rows = {r[0]: r[1:] for r in con.execute("SELECT lang, lang_canonical, name FROM languages").fetchall()}
    assert rows["cmn"] == ("zh", "Mandarin Chinese") and rows["zh"][0] == "zh" and rows["eng"] == ("en", "English")
    assert rows["swh"][0] == rows["sw"][0] == "sw" and set(rows) == {*LANGS, "eng", "zh", "de", "fr", "sw"}
