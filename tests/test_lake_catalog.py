"""The lake checks content, not just presence (checksums, marker schema, unreadable files of every table), and
keeps a catalogue that is read, not rebuilt: opened from a snapshot and a log, rebuilt from markers by
`lake check --repair`, compacted per complete checkpoint with the same answers before, during and after."""

import json
import logging

import numpy as np
import pytest
from test_lake import write_language

from neuronxa_ray.cli import main
from neuronxa_ray.lake import Lake
from neuronxa_ray.sql import connect


def _lake(tmp_path, langs=("eng", "fra", "deu"), seed=0):
    rng = np.random.default_rng(seed)
    lake = Lake(tmp_path)
    for lang in langs:
        write_language(lake, lang, rng)
    return lake


def _flip_inside_page(path, table_rows_col="diagonal"):
    """Flip one byte in the middle of the file's first data page (same size, footer intact)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    col = next(
        meta.row_group(0).column(i)
        for i in range(meta.num_columns)
        if meta.row_group(0).column(i).path_in_schema == table_rows_col
    )
    start = col.data_page_offset
    offset = start + col.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_inside_a_page_is_found_by_lake_check(tmp_path, capsys):
    lake = _lake(tmp_path)
    assert lake.check() == []
    matches = tmp_path / lake.language_file("matches", "m", "c", "fra", "eng")
    size = matches.stat().st_size
    _flip_inside_page(matches)
    assert matches.stat().st_size == size
    problems = lake.check()
    assert [(p.kind, p.path) for p in problems] == [("broken", lake.done_marker("m", "c", "eng", "fra"))]
    assert "checksum" in problems[0].detail
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert not matches.exists() and lake.completion("m", "c", "eng", "fra") is None
    assert lake.completion("m", "c", "eng", "deu") is not None


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: {k: v for k, v in r.items() if k != "model"},
        lambda r: {**r, "files": None},
        lambda r: {**r, "files": [{"path": 3}]},
        lambda r: {**r, "lang": ["fra"]},
        lambda r: [r],
    ],
    ids=["no-model", "files-null", "file-record-bad", "lang-list", "not-object"],
)
def test_marker_that_is_json_but_not_a_marker_is_broken_not_a_traceback(tmp_path, edit, capsys, caplog):
    lake = _lake(tmp_path)
    rel = lake.done_marker("m", "c", "eng", "fra")
    record = json.loads((tmp_path / rel).read_text())
    (tmp_path / rel).write_text(json.dumps(edit(record)))
    problems = lake.check()
    assert [(p.kind, p.path) for p in problems if p.path == rel] == [("broken", rel)]
    assert lake.completion("m", "c", "eng", "fra") is None  # what `run` asks: redo it
    assert main(["lake", "check", "--lake", str(tmp_path)]) == 1
    assert main(["scores", "--lake", str(tmp_path)]) == 0
    assert main(["sql", "--lake", str(tmp_path), "select count(*) from alignment_summary"]) == 0
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert not (tmp_path / rel).exists()


def test_unreadable_files_of_every_table_are_problems_that_repair_removes(tmp_path):
    lake = _lake(tmp_path)
    for rel in ("runs/garbage.parquet", "benchmarks/junk.parquet", "attempts/run_id=x/part-00000.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"PAR1 not parquet at all")
    problems = lake.check()
    assert sorted((p.kind, p.path) for p in problems) == [
        ("broken", "attempts/run_id=x/part-00000.parquet"),
        ("broken", "benchmarks/junk.parquet"),
        ("broken", "runs/garbage.parquet"),
    ]
    assert all("Parquet" in p.detail for p in problems)
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert not (tmp_path / "runs" / "garbage.parquet").exists()


def test_left_out_languages_are_one_line_per_query(tmp_path, caplog):
    rng = np.random.default_rng(1)
    lake = Lake(tmp_path)
    write_language(lake, "eng", rng, ckpt_fp="A")
    write_language(lake, "fra", rng, ckpt_fp="A")
    for lang in ("deu", "ita", "spa", "por", "nld", "swe"):
        write_language(lake, lang, rng, ckpt_fp="B")  # another run's settings
    with caplog.at_level(logging.WARNING):
        con = connect(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "6 language" in lines[0] and "other settings" in lines[0] and "deu" in lines[0]
    assert con.execute("SELECT DISTINCT lang FROM alignment").fetchall() == [("fra",)]
