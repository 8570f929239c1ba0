"""One identity per downstream result, one line per user mistake, labels that cannot be misread.

Each case reproduces a reported bad behaviour as a user meets it (the CLI, its exit code, its one error line, what
the lake holds afterwards): conflicting benchmark values, imports overwriting each other, checkpoints sharing a
name, nondeterministic correlations, tracebacks for bad input, a per-layer table that put FFN block i beside
hidden-state layer i, a report that dropped 2-letter codes, and noise in non-terminal logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from lake_helpers import mark_complete
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.cli import main, print_scores
from neuronxa_ray.compute.matching import match_stats
from neuronxa_ray.lake import Lake, matches_table
from neuronxa_ray.query import connect

REPO = Path(__file__).resolve().parent.parent
LANGS = ["cmn", "deu", "fra", "swh"]  # stored codes; benchmarks below use lm-eval's zh, de, fr, sw


def _error(capsys, argv) -> tuple[int, str]:
    """Exit code and the one error line of a CLI call (a traceback or a second line fails the test)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return code, lines[0]


def _csv(path: Path, rows: list[tuple], header: str = "benchmark,lang,value") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _benchmark_rows(lake: Path) -> list[dict]:
    return [r for f in sorted((lake / "benchmarks").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def scored_lake(tmp_path_factory):
    """Model m @ main, pivot eng, four languages; NASCA over 2 FFN blocks and MEXA over 3 hidden layers
    (embeddings + 2 blocks); random cosine matrices of 6 sentences."""
    root = tmp_path_factory.mktemp("scored")
    lake = Lake(root)
    rng = np.random.default_rng(5)
    for i, lang in enumerate(LANGS):
        stats = {}
        for method, layers in (("nas", 2), ("hidden", 3)):
            mats = rng.normal(size=(layers, 6, 6)) + np.eye(6) * (0.5 + i)
            stats[method] = match_stats(torch.from_numpy(mats)).numpy()
        lake.write(
            "matches",
            matches_table("m", "main", "eng", lang, stats),
            lake.language_file("matches", "m", "main", lang, "eng"),
        )
    mark_complete(lake)
    return root


# ----------------------------------------------------------------------------------- 1. identity of benchmarks


def test_conflicting_values_in_one_file_are_refused_naming_both(tmp_path, capsys):
    lake = tmp_path / "lake"
    dup = _csv(tmp_path / "dup.csv", [("xnli", "fr", 0.5), ("xnli", "fr", 0.1), ("xnli", "fra", 0.9)])
    code, line = _error(capsys, ["import-benchmarks", str(dup), "--lake", str(lake)])
    assert code == 2 and "xnli fr" in line and "0.5 (line 2" in line and "0.1 (line 3" in line
    spelled = _csv(tmp_path / "spelled.csv", [("xnli", "fr", 0.5), ("xnli", "fra_Latn", 0.9)])
    code, line = _error(capsys, ["import-benchmarks", str(spelled), "--lake", str(lake)])
    assert code == 2 and "0.5" in line and "0.9" in line and "'fra_Latn'" in line
    assert not list(lake.glob("benchmarks/*.parquet"))
    same = _csv(tmp_path / "same.csv", [("xnli", "fr", 0.5), ("xnli", "fra", 0.5), ("xnli", "de", 0.4)])
    assert main(["import-benchmarks", str(same), "--lake", str(lake)]) == 0
    assert sorted((r["lang_canonical"], r["value"]) for r in _benchmark_rows(lake)) == [("de", 0.4), ("fr", 0.5)]


def test_conflicts_across_imports_are_refused_unless_replace(tmp_path, capsys):
    lake = tmp_path / "lake"
    first = _csv(tmp_path / "first.csv", [("xnli", "fr", 0.5), ("xnli", "de", 0.4)])
    assert main(["import-benchmarks", str(first), "--lake", str(lake)]) == 0
    second = _csv(tmp_path / "second.csv", [("xnli", "fra", 0.9), ("xnli", "swh", 0.3)])
    code, line = _error(capsys, ["import-benchmarks", str(second), "--lake", str(lake)])
    assert code == 2 and "xnli fr" in line and "0.5 in" in line and "first.parquet" in line and "0.9 in" in line
    assert "--replace" in line and len(_benchmark_rows(lake)) == 2
    assert main(["import-benchmarks", str(second), "--lake", str(lake), "--replace"]) == 0
    err = capsys.readouterr().err
    assert "replaced 1 value(s): xnli fr (model any, checkpoint any) 0.5 -> 0.9" in err
    got = {(r["benchmark"], r["lang_canonical"]): r["value"] for r in _benchmark_rows(lake)}
    assert got == {("xnli", "fr"): 0.9, ("xnli", "de"): 0.4, ("xnli", "sw"): 0.3}
    assert len(_benchmark_rows(lake)) == 3  # the old value left its file: one row per identity
    # the same import again: no conflict, no new file
    assert main(["import-benchmarks", str(second), "--lake", str(lake)]) == 0
    assert len(list((lake / "benchmarks").glob("*.parquet"))) == 2
    # a repeat stored once does not shift the line the message names
    third = _csv(tmp_path / "third.csv", [("xnli", "fr", 0.9), ("xnli", "fra", 0.9), ("xnli", "deu", 0.7)])
    code, line = _error(capsys, ["import-benchmarks", str(third), "--lake", str(lake)])
    assert code == 2 and "xnli de" in line and "0.4 in" in line and "0.7 in" in line and "(line 4)" in line


def _lm_eval(path: Path, model: str, values: dict[str, float]) -> Path:
    doc = {
        "results": {
            f"xnli_{code}": {"acc,none": v, "acc_stderr,none": 0.01, "alias": code} for code, v in values.items()
        },
        "config": {"model": "hf", "model_args": f"pretrained={model}"},
        "model_name": model,
        "date": 1.7e9,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_two_models_results_json_keep_their_own_files(tmp_path, capsys):
    lake = tmp_path / "lake"
    a = _lm_eval(tmp_path / "a" / "results.json", "org/a", {"fr": 0.5, "de": 0.4})
    b = _lm_eval(tmp_path / "b" / "results.json", "org/b", {"fr": 0.6, "de": 0.3})
    for path in (a, b):
        assert main(["import-benchmarks", str(path), "--lake", str(lake), "--model", "@results"]) == 0
    assert "holds another import" in capsys.readouterr().err
    files = sorted(p.name for p in (lake / "benchmarks").glob("*.parquet"))
    assert len(files) == 2 and "results.parquet" in files
    rows = {(r["model"], r["lang"]): r["value"] for r in _benchmark_rows(lake)}
    assert rows == {("org/a", "fr"): 0.5, ("org/a", "de"): 0.4, ("org/b", "fr"): 0.6, ("org/b", "de"): 0.3}
    # stored as "any model", the second would contradict the first: refused, with the way out
    other = tmp_path / "lake2"
    assert main(["import-benchmarks", str(a), "--lake", str(other)]) == 0
    code, line = _error(capsys, ["import-benchmarks", str(b), "--lake", str(other)])
    assert code == 2 and "0.5" in line and "0.6" in line and "--model" in line
    # an explicit --name that another import holds needs --replace
    c = _csv(tmp_path / "c.csv", [("belebele", "fra_Latn", 0.7)])
    code, line = _error(capsys, ["import-benchmarks", str(c), "--lake", str(lake), "--name", "results"])
    assert code == 2 and "results.parquet holds another import" in line
    assert main(["import-benchmarks", str(c), "--lake", str(lake), "--name", "results", "--replace"]) == 0
    assert "replaced benchmarks/results.parquet" in capsys.readouterr().err


def test_lm_eval_tasks_of_one_file_that_collide_are_refused(tmp_path, capsys):
    doc = {
        "results": {"paws_fr": {"acc,none": 0.5}, "pawsx_fr": {"acc,none": 0.6}},
        "config": {"model_args": "pretrained=m"},
        "date": 1.0,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    code, line = _error(capsys, ["import-benchmarks", str(path), "--lake", str(tmp_path / "lake")])
    assert code == 2 and "paws_fr (0.5)" in line and "pawsx_fr (0.6)" in line


def test_unknown_language_codes_are_refused_unless_the_lake_holds_them(tmp_path, capsys):
    lake = tmp_path / "lake"
    bad = _csv(tmp_path / "bad.csv", [("xnli", "xx", 0.5), ("xnli", "klingon", 0.1), ("xnli", "fr", 0.2)])
    code, line = _error(capsys, ["import-benchmarks", str(bad), "--lake", str(lake)])
    assert code == 2 and "'xx' (line 2)" in line and "'klingon' (line 3)" in line
    # the lake holds xx: its marker (a compacted checkpoint's matches files no longer name their languages)
    Lake(lake).mark_done("m", "main", "eng", "xx", "fp-xx", {"checkpoint_fingerprint": "fp"}, [])
    ok = _csv(tmp_path / "ok.csv", [("xnli", "xx", 0.5)])
    assert main(["import-benchmarks", str(ok), "--lake", str(lake)]) == 0


def test_checkpoints_that_would_share_a_name_are_refused(tmp_path, capsys):
    for parent in ("a", "b"):
        (tmp_path / "runs" / parent / "checkpoint-100").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    for lang, texts in TEXTS.items():
        (data / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    job = tmp_path / "job.yaml"
    glob = str(tmp_path / "runs" / "*" / "checkpoint-*")
    job.write_text(
        yaml.safe_dump({"model": "m", "data": str(data), "checkpoints": {"glob": glob}, "lake": str(tmp_path / "lake")})
    )
    t0 = time.monotonic()
    code, line = _error(capsys, ["run", str(job)])
    assert code == 2 and time.monotonic() - t0 < 10
    assert "a/checkpoint-100" in line and "b/checkpoint-100" in line and "'checkpoint-100'" in line
    listed = tmp_path / "listed.yaml"
    paths = [str(tmp_path / "runs" / p / "checkpoint-100") for p in ("a", "b")]
    listed.write_text(yaml.safe_dump({"model": "m", "data": str(data), "checkpoints": paths}))
    code, line = _error(capsys, ["run", str(listed)])
    assert code == 2 and "a/checkpoint-100" in line and "b/checkpoint-100" in line


def test_correlation_is_the_same_for_every_query_over_a_lake_with_duplicates(scored_lake, tmp_path):
    """A lake written before imports checked identities may hold two values for one; the views pick one by a
    rule (the larger), so every query over the same lake answers the same."""
    lake = Lake(tmp_path / "lake")
    import shutil

    shutil.copytree(scored_lake, tmp_path / "lake", dirs_exist_ok=True)
    import pyarrow as pa

    for name, values in (("one", [0.9, 0.2, 0.5, 0.1]), ("two", [0.1, 0.6, 0.3, 0.8])):
        lake.write_benchmarks(
            name, pa.table({"benchmark": ["xnli"] * 4, "lang": ["zh", "de", "fr", "sw"], "value": values})
        )
    answers = set()
    for _ in range(6):
        con = connect(lake)
        answers.add(
            con.execute("SELECT pearson FROM correlation WHERE method = 'nas' AND benchmark = 'xnli'").fetchone()
        )
    assert len(answers) == 1
    con = connect(lake)
    got = dict(con.execute("SELECT lang, value FROM benchmark_pairs WHERE method = 'nas'").fetchall())
    assert got == {"cmn": 0.9, "deu": 0.6, "fra": 0.5, "swh": 0.8}


# ---------------------------------------------------------------------------------------- 6. one line per mistake


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.csv", None, "'{dir}/missing.csv' does not exist"),
        ("bad.json", '{"results": ', "not a readable JSON file"),
        ("novalue.csv", "benchmark,lang\nxnli,fr\n", "missing column(s) ['value']"),
        ("text.csv", "benchmark,lang,value\nxnli,fr,abc\n", "line 2: value 'abc' is not a finite number"),
        ("empty-value.csv", "benchmark,lang,value\nxnli,fr,\n", "line 2: value empty is not a finite number"),
        ("inf.csv", "benchmark,lang,value\nxnli,fr,inf\n", "value 'inf' is not a finite number"),
        ("nan.csv", "benchmark,lang,value\nxnli,fr,NaN\n", "line 2: value 'NaN' is not a finite number"),
        ("two.csv", "benchmark,lang,value,model,Model\nx,fr,1,a,b\n", "columns ['model', 'Model'] are the same column"),
        ("empty-lang.csv", "benchmark,lang,value\nxnli,,0.5\n", "line 2: empty 'lang'"),
        ("header.csv", "benchmark,lang,value\n", "no rows"),
        ("empty.csv", "", "not a readable CSV table"),
        ("ragged.csv", "benchmark,lang,value\nxnli,fr,0.5,extra\n", "not a readable CSV table"),
        ("bad.parquet", "not parquet", "not a readable Parquet table"),
        ("notjson.json", "[1, 2]", "no 'results' object"),
    ],
)
def test_import_mistakes_are_one_line(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, line = _error(capsys, ["import-benchmarks", str(path), "--lake", str(tmp_path / "lake")])
    assert code == 2 and expected.format(dir=tmp_path) in line, line
    assert not list(tmp_path.glob("lake/benchmarks/*"))


def test_import_into_a_missing_bucket_fails_like_run(s3_server, tmp_path, monkeypatch, capsys):
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    csv = _csv(tmp_path / "b.csv", [("xnli", "fr", 0.5)])
    code, line = _error(capsys, ["import-benchmarks", str(csv), "--lake", "s3://no-such-bucket/x"])
    assert code == 2 and "bucket 'no-such-bucket' does not exist" in line
    import pyarrow.fs as pafs

    assert s3_server["fs"].get_file_info("no-such-bucket").type == pafs.FileType.NotFound  # not created


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"eng.txt": "", "fra.txt": "", "deu.txt": ""}, "every .txt file is empty"),
        ({"eng.txt": "Hello\n", "fra.txt": "Bonjour\n"}, "1 sentence(s) per language"),
    ],
)
def test_data_without_sentences_is_one_line_before_ray(tmp_path, capsys, files, expected):
    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text, encoding="utf-8")
    model = tmp_path / "tiny"
    save_tiny("llama", model)
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"model": str(model), "data": str(data), "device": "cpu", "lake": str(tmp_path / "lake")})
    )
    t0 = time.monotonic()
    code, line = _error(capsys, ["run", str(job)])
    assert code == 2 and expected in line and str(data) in line and time.monotonic() - t0 < 10


def test_report_and_sql_outputs_are_checked_first(scored_lake, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    lake = str(scored_lake)
    cases = [
        (["report", "--lake", lake, "-o", str(tmp_path / "dir")], "is a directory"),
        (["report", "--lake", lake, "-o", str(tmp_path / "r.html"), "--figures", str(tmp_path / "file")], "is a file"),
        (["report", "--lake", lake, "-o", str(tmp_path / "file" / "r.html")], "is a file, not a directory"),
        (["sql", "--lake", lake, "-o", str(tmp_path / "dir"), "SELECT 1"], "is a directory"),
        (["sql", "--lake", lake, "--format", "parquet", "-o", str(tmp_path / "dir"), "SELECT 1"], "is a directory"),
        (["sql", "--lake", lake, "-f", str(tmp_path / "missing.sql")], "cannot read the SQL file"),
        (["sql", "--lake", lake, "-f", str(tmp_path / "dir")], "cannot read the SQL file"),
        (["lake", "check", "--lake", str(tmp_path / "file")], "is a file, not a lake directory"),
    ]
    for argv, expected in cases:
        code, line = _error(capsys, argv)
        assert code == 2 and expected in line, (argv, line)
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["watch", "job.yaml", "--interval", "-1"], "--interval: '-1': must be > 0 seconds"),
        (["watch", "job.yaml", "--interval", "0"], "must be > 0 seconds"),
        (["watch", "job.yaml", "--settle", "-5"], "must be >= 0 seconds"),
        (["watch", "job.yaml", "--interval", "soon"], "is not a number of seconds"),
        (["import-benchmarks", "b.csv", "--model", ""], "--model: must not be empty"),
        (["import-benchmarks", "b.csv", "--checkpoint", " "], "--checkpoint: must not be empty"),
        (["import-benchmarks", "b.csv", "--name", ""], "--name: must not be empty"),
        # an unset $LAKE is not ./lake: `lake check --repair` would act on another lake
        (["scores", "--lake", ""], "--lake: must not be empty"),
        (["lake", "check", "--repair", "--lake", ""], "--lake: must not be empty"),
        # an override's mistake names the option, not the job file whose value it replaces
        (["run", "job.yaml", "--n-sentences", "-3"], "--n-sentences: -3 is below 2"),
        (["run", "job.yaml", "--batch-size", "0"], "--batch-size: 0 is below 1"),
        (["run", "job.yaml", "--num-actors", "two"], "--num-actors: 'two' is not a whole number"),
    ],
)
def test_bad_flag_values_are_usage_errors(capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and expected in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"data": {"path": "d", "ext": "txt"}}, "'data.ext' = 'txt': must start with a dot, such as '.txt'"),
        ({"languages": ["eng"]}, "names only the pivot 'eng'"),
    ],
)
def test_job_mistakes_found_in_testing(tmp_path, capsys, fields, expected):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"model": "m", "data": "d", **fields}))
    code, line = _error(capsys, ["run", str(job)])
    assert code == 2 and expected in line


def test_sql_refuses_statements_that_write_files_and_the_lake_is_unchanged(scored_lake, tmp_path, capsys):
    """A COPY onto a language's Parquet file replaced its rows (the second sweep): `sql` reads; its results are
    written with -o. Tables a query creates live in memory."""
    target = next((scored_lake / "matches").rglob("part-0.parquet"))
    before = target.read_bytes()
    lake = str(scored_lake)
    for query, what in (
        (f"COPY (SELECT 1 AS x) TO '{target}' (FORMAT parquet)", "COPY statements"),
        (f"SELECT 1; COPY (SELECT 1 AS x) TO '{tmp_path / 'x.csv'}'", "COPY statements"),
        (f"PREPARE p AS COPY (SELECT 1 AS x) TO '{target}' (FORMAT parquet); EXECUTE p", "PREPARE statements"),
        (f"EXPORT DATABASE '{tmp_path / 'db'}'", "EXPORT statements"),
        (f"ATTACH '{tmp_path / 'a.duckdb'}'; CREATE TABLE a.t AS SELECT 1", "ATTACH statements"),
        (f"SET profiling_output = '{target}'; PRAGMA enable_profiling = 'json'; SELECT 1", "SET profiling_output"),
        ("CALL pragma_version()", "CALL statements"),
    ):
        code, line = _error(capsys, ["sql", "--lake", lake, query])
        assert code == 2 and f"not {what}" in line and "-o FILE" in line, line
    assert target.read_bytes() == before and not list(tmp_path.iterdir())
    query = "SET threads = 1; CREATE TABLE t AS SELECT 41 + 1 AS a; PIVOT t ON a USING count(*)"
    assert main(["sql", "--lake", lake, query]) == 0
    assert "42" in capsys.readouterr().out
    assert Lake(scored_lake).check() == []


def test_lake_repair_asks_for_a_rerun_only_when_a_language_was_removed(scored_lake, tmp_path, capsys):
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake, lake)
    (lake / "matches" / ".part-0.parquet.abc.tmp").write_bytes(b"x")  # housekeeping: nothing to recompute
    assert main(["lake", "check", "--lake", str(lake), "--repair"]) == 0
    assert "repaired 1 problem(s)\n" in capsys.readouterr().err
    (lake / "benchmarks").mkdir(exist_ok=True)
    (lake / "benchmarks" / "b.parquet").write_bytes(b"not parquet")  # a re-import brings it back, not a rerun
    assert main(["lake", "check", "--lake", str(lake), "--repair"]) == 0
    assert "repaired 1 problem(s)\n" in capsys.readouterr().err
    marker = next((lake / "_done").rglob("lang=fra.json"))
    marker.write_text("[1, 2, 3]")  # a broken marker: fra is removed, to be computed again
    assert main(["lake", "check", "--lake", str(lake), "--repair"]) == 0
    assert "problem(s); rerun the job to recompute" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_is_taken_before_or_after_the_subcommand(tmp_path, capsys, where):
    argv = ["lake", "check", "--lake", str(tmp_path / "none")]
    code = main(["-v", *argv] if where == "before" else [*argv, "-v"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "does not exist" in err.splitlines()[-1]
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err  # without -v: one line


def test_version_is_printed(capsys):
    from neuronxa_ray import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"neuronxa-ray {__version__}\n"


def test_lake_compact_refuses_a_model_or_checkpoint_the_lake_does_not_hold(scored_lake, tmp_path, capsys):
    lake = str(scored_lake)
    code, line = _error(capsys, ["lake", "compact", "--lake", lake, "--model", "nosuchmodel"])
    assert code == 2 and "no model 'nosuchmodel'" in line and "['m']" in line
    code, line = _error(capsys, ["lake", "compact", "--lake", lake, "--model", "m", "--checkpoint", "mian"])
    assert code == 2 and "no checkpoint 'mian'; did you mean 'main'?" in line
    code, line = _error(capsys, ["lake", "compact", "--lake", str(tmp_path), "--model", "m"])  # no languages yet
    assert code == 2 and "no model 'm'" in line


def test_lake_compact_finds_a_checkpoint_the_catalogue_does_not_list_yet(scored_lake, tmp_path, capsys):
    """A run killed between its markers and its catalogue entry: named on the command line, the checkpoint is
    found from its markers, compacted, and brought into the catalogue."""
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake, lake)
    shutil.rmtree(lake / "_catalog", ignore_errors=True)
    Lake(lake).check(repair=True)  # a catalogue without the next checkpoint's markers
    for path in sorted((lake / "_done" / "model=m" / "checkpoint=main").rglob("*.json")):
        twin = Path(str(path).replace("checkpoint=main", "checkpoint=late"))
        twin.parent.mkdir(parents=True, exist_ok=True)
        twin.write_text(path.read_text().replace("checkpoint=main", "checkpoint=late").replace('"main"', '"late"'))
    for path in sorted((lake / "matches" / "model=m" / "checkpoint=main").rglob("*.parquet")):
        twin = Path(str(path).replace("checkpoint=main", "checkpoint=late"))
        twin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, twin)
    assert main(["lake", "compact", "--lake", str(lake), "--model", "m", "--checkpoint", "late"]) == 0
    assert "compacted m @ late" in capsys.readouterr().out
    assert main(["lake", "compact", "--lake", str(lake), "--checkpoint", "late"]) == 0  # now in the catalogue


def test_lake_compact_over_an_unreadable_catalogue_is_one_line(scored_lake, tmp_path, capsys):
    import shutil

    from neuronxa_ray.lake.catalog import Catalog

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake, lake)
    snapshot = Catalog(Lake(lake).storage).fold()
    (lake / snapshot).write_bytes(b"")
    code, line = _error(capsys, ["lake", "compact", "--lake", str(lake)])
    assert code == 2 and snapshot in line and "lake check --repair" in line


def test_import_takes_known_columns_in_any_case_and_names_the_others(tmp_path, capsys, caplog):
    """A "Model" column was dropped without a word, so its rows counted for every model."""
    lake = tmp_path / "lake"
    csv = _csv(tmp_path / "b.csv", [("xnli", "fr", 0.61, "org/a", "x")], header="benchmark, Lang ,value,Model,notes")
    assert main(["import-benchmarks", str(csv), "--lake", str(lake)]) == 0
    rows = _benchmark_rows(lake)
    assert [(r["lang"], r["model"], r["value"]) for r in rows] == [("fr", "org/a", 0.61)]
    assert "column(s) ['notes'] not stored" in caplog.text


def test_import_reads_missing_marks_gzip_and_leading_blank_lines_as_before(tmp_path):
    """R writes a missing model as NA: "any model", as before every column was read as text; a .csv.gz is read
    by its extension; a checkpoint 0001000 stays text after a leading blank line; a Latin-1 byte in a column that
    is not stored does not refuse the file."""
    import gzip

    lake = tmp_path / "lake"
    (tmp_path / "r.csv.gz").write_bytes(gzip.compress(b"benchmark,lang,value,model,checkpoint\nxnli,fr,0.5,NA,N/A\n"))
    (tmp_path / "blank.csv").write_text("\nbenchmark,lang,value,checkpoint\nxnli,de,0.4,0001000\n")
    (tmp_path / "latin.csv").write_bytes(b"benchmark,lang,value,notes\nxnli,sw,0.3,caf\xe9\n")
    for name in ("r.csv.gz", "blank.csv", "latin.csv"):
        assert main(["import-benchmarks", str(tmp_path / name), "--lake", str(lake)]) == 0
    rows = sorted((r["lang"], r["model"], r["checkpoint"]) for r in _benchmark_rows(lake))
    assert rows == [("de", None, "0001000"), ("fr", None, None), ("sw", None, None)]


def test_an_empty_job_file_and_a_run_stopped_by_a_mistake_leave_no_empty_lake(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("")
    code, line = _error(capsys, ["run", str(job)])
    assert code == 2 and "the job file is empty" in line
    lake = tmp_path / "new" / "lake"
    job.write_text(yaml.safe_dump({"model": "m", "data": str(tmp_path / "nodata"), "lake": str(lake)}))
    code, line = _error(capsys, ["run", str(job)])
    assert code == 2 and "does not exist" in line
    assert not (tmp_path / "new").exists()  # the write probe's directories are removed again


# ------------------------------------------------------------------------------------------------ 8. presentation


def test_per_layer_scores_put_each_block_beside_the_hidden_state_after_it(scored_lake, capsys):
    import io

    out = io.StringIO()
    con = connect(scored_lake)
    print_scores(con, per_layer=True, out=out)
    lines = out.getvalue().splitlines()
    assert any("hidden state after block i" in line and "embeddings" in line for line in lines)
    head = next(line for line in lines if line.split()[:2] == ["lang", "block"])
    assert "layer" not in head.split()
    cells = {tuple(line.split()[:2]): line.split()[2:] for line in lines if line.split()[:1] == ["fra"]}
    assert set(cells) == {("fra", "embeddings"), ("fra", "0"), ("fra", "1")}  # not 0..2 for both methods
    expected = dict(
        con.execute(
            "SELECT method || ':' || layer, score FROM alignment WHERE lang = 'fra' AND method IN ('nas', 'hidden')"
        ).fetchall()
    )
    assert cells[("fra", "embeddings")] == ["-", f"{expected['hidden:0']:.3f}"]
    assert cells[("fra", "1")] == [f"{expected['nas:1']:.3f}", f"{expected['hidden:2']:.3f}"]
    assert "nan" not in out.getvalue()


def test_report_names_the_lake_uri_and_joins_on_canonical_codes(scored_lake, tmp_path, capsys):
    pytest.importorskip("altair")
    import shutil

    from neuronxa_ray.report import build_report, render_html

    root = tmp_path / "lake"
    shutil.copytree(scored_lake, root)
    csv = _csv(tmp_path / "b.csv", [("xnli", "zh", 0.6), ("xnli", "de", 0.5), ("xnli", "fr", 0.4), ("xnli", "sw", 0.3)])
    assert main(["import-benchmarks", str(csv), "--lake", str(root)]) == 0
    report = build_report(str(root))
    page = render_html(report)
    assert "Lake(" not in page and f"<code>{root}</code>" in page
    section = next(s for s in report.sections if s.id == "correlation")
    assert [f.title for f in section.figures] == ["xnli against alignment: m @ main, pivot eng"]
    assert section.figures[0].n_rows == 8  # four languages x two methods


def test_no_noise_in_non_terminal_logs_and_one_nothing_to_do(tmp_path):
    """A run as a CI job sees it (stderr a pipe, RAY_AUTH_MODE unset): no progress bars, no Ray notice about token
    authentication; the second run says "nothing to do" once."""
    model, data = tmp_path / "tiny", tmp_path / "data"
    save_tiny("llama", model)
    data.mkdir()
    for lang in ("eng", "fra"):
        (data / f"{lang}.txt").write_text("\n".join(TEXTS[lang]) + "\n", encoding="utf-8")
    job = tmp_path / "job.yaml"
    fields = {"model": str(model), "data": str(data), "n_sentences": 4, "device": "cpu", "lake": str(tmp_path / "lake")}
    job.write_text(yaml.safe_dump(fields))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    cli = [sys.executable, "-m", "neuronxa_ray.cli", "run", str(job), "--no-scores"]
    first = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    for noise in ("Token authentication", "it/s]", "Loading weights", "\r"):
        assert noise not in first.stderr, (noise, first.stderr[-2000:])
    second = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert second.returncode == 0 and second.stderr.count("nothing to do") == 1, second.stderr


def test_progress_bars_of_model_loading_stay_off_a_pipe(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from neuronxa_ray.model.gguf import quiet_progress
    from neuronxa_ray.model.load import load_model
    from neuronxa_ray.model.spec import ModelSpec

    pytest.importorskip("gguf")
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    model = tmp_path / "tiny"
    save_tiny("llama", model)
    assert hf_logging.is_progress_bar_enabled()  # transformers' default, which no earlier test may have changed
    capfd.readouterr()
    load_model(ModelSpec(model=str(model), device="cpu"))
    original = gguf_utils.tqdm
    with quiet_progress(gguf=True):
        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert gguf_utils.tqdm is original and hf_logging.is_progress_bar_enabled()
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "de-quantizing" not in err, err


def test_the_wheel_builds_without_setuptools_warnings(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert "is absent from the `packages`" not in build.stdout + build.stderr
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    bundled = sorted(p.name for p in (REPO / "neuronxa_ray" / "data" / "udhr").iterdir())
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("neuronxa_ray/data/udhr/")) == bundled
