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
from neuronxa_ray.query import connect
from neuronxa_ray.query.connect import derived_tables


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


# -- the catalogue ---------------------------------------------------------------------------------------------
QUERIES = (
    "SELECT model, checkpoint, method, pivot_lang, lang, layer, score, n_sentences FROM alignment ORDER BY ALL",
    "SELECT * FROM retrieval ORDER BY ALL",
    "SELECT * FROM alignment_summary ORDER BY ALL",
    "SELECT lang, layer, neuron, n_active, abs_sum FROM neuron_counts ORDER BY ALL",
    "SELECT count(*), count(DISTINCT lang) FROM matches",
    "SELECT count(*) FROM sentence_states",
    "SELECT * FROM sentence_hits ORDER BY ALL",
    "SELECT * FROM retrieval_ranks ORDER BY ALL",
    "SELECT * FROM training_curve ORDER BY ALL",
)


def answers(root, reader="auto"):
    con = connect(root, reader=reader)
    return [con.execute(q).fetchall() for q in QUERIES]


def _two_checkpoints(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    lake = Lake(tmp_path)
    for ckpt in ("c", "d"):
        for lang in ("eng", "fra", "deu", "swh"):
            write_language(lake, lang, rng, ckpt=ckpt)
    return lake


def test_views_open_from_the_catalogue_without_reading_markers(tmp_path, monkeypatch):
    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    assert list((tmp_path / "_catalog" / "log").glob("*.json"))

    def no(*a, **k):
        raise AssertionError("a marker was read")

    monkeypatch.setattr(Lake, "_read_marker", no)
    monkeypatch.setattr(Lake, "verify", no)
    assert answers(tmp_path) == expected
    monkeypatch.undo()
    assert lake.check() == []


def test_catalogue_folds_into_snapshots_and_reads_the_same(tmp_path, monkeypatch):
    import neuronxa_ray.lake.catalog as catalog

    monkeypatch.setattr(catalog, "FOLD_EVERY", 3)
    monkeypatch.setattr(catalog, "LIST_EVERY", 0)
    monkeypatch.setattr(catalog, "RETAIN_S", 0.0)
    lake = _two_checkpoints(tmp_path)
    snapshots = list((tmp_path / "_catalog").glob("snapshot-*.parquet"))
    assert 1 <= len(snapshots) <= 2  # older ones cleaned
    assert len(list((tmp_path / "_catalog" / "log").glob("*.json"))) < 8  # folded entries deleted
    state = catalog.Catalog(lake.storage).load()
    assert set(state.markers) == set(lake.markers())
    import pyarrow.parquet as pq  # an outside reader finds the committed files in the snapshot

    files = pq.read_table(max(snapshots), columns=["marker", "files"]).to_pylist()
    assert any(f["table"] == "matches" for row in files for f in row["files"])
    assert lake.check() == []


def test_a_marker_the_catalogue_lacks_or_that_was_deleted_is_seen_and_repair_rebuilds(tmp_path):
    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    fra = lake.done_marker("m", "c", "eng", "fra")
    record = json.loads((tmp_path / fra).read_text())
    (tmp_path / fra).unlink()  # deleted by hand: no view shows it, `lake check` says the catalogue differs
    query = "SELECT DISTINCT lang FROM alignment WHERE checkpoint = 'c'"
    assert ("fra",) not in connect(tmp_path).execute(query).fetchall()
    assert {p.kind for p in lake.check()} == {"catalogue", "orphaned"}
    (tmp_path / fra).write_text(json.dumps(record))  # written, the writer died before its catalogue entry
    assert answers(tmp_path) == expected
    import shutil

    shutil.rmtree(tmp_path / "_catalog")  # a lake written before catalogues: every marker is read, check says so
    assert answers(tmp_path) == expected
    assert [p.kind for p in lake.check()] == ["catalogue"]
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert list((tmp_path / "_catalog").glob("snapshot-*.parquet")) and lake.check() == []
    assert answers(tmp_path) == expected


def test_tidy_brings_the_catalogue_in_line_with_a_checkpoint(tmp_path):
    lake = _two_checkpoints(tmp_path)
    fra = lake.done_marker("m", "d", "eng", "fra")
    (tmp_path / fra).unlink()
    assert lake.reconcile("m", "d") == 1 and lake.reconcile("m", "d") == 0
    assert [p.kind for p in lake.check()] == ["orphaned"] * 4


# -- compaction ------------------------------------------------------------------------------------------------
def _files(root, table):
    return sorted(p.relative_to(root).as_posix() for p in (root / table).rglob("*.parquet"))


@pytest.mark.parametrize("reader", ["duckdb", "arrow"])
def test_compaction_keeps_every_answer_and_leaves_few_files(tmp_path, reader):
    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path, reader)
    before = connect(tmp_path, reader=reader)  # a reader opened before the compaction
    assert main(["lake", "compact", "--lake", str(tmp_path)]) == 0
    assert [before.execute(q).fetchall() for q in QUERIES] == expected  # the old files are still there
    assert answers(tmp_path, reader) == expected
    view = lake.view_files()
    assert len(view.files["matches"]) == 2 and len(view.files["neuron_counts"]) == 2 and not view.partial
    assert all("compacted-" in p for p in view.files["matches"])
    assert lake.check() == []  # markers verify against the compacted files; superseded files are not orphans
    from neuronxa_ray.lake.compaction import compact

    done = compact(lake, derived=derived_tables(), vacuum_after_s=0)  # nothing left to compact; the superseded files go
    assert not done.compacted and done.vacuumed
    assert _files(tmp_path, "matches") == sorted(view.files["matches"])
    assert answers(tmp_path, reader) == expected and lake.check() == []
    assert lake.is_done("m", "c", "eng", "fra", "fp-fra")  # `run` still sees every language done


@pytest.mark.parametrize("repair", [True, False], ids=["repaired", "compacted-again"])
@pytest.mark.parametrize("step", ["files", "markers", "catalogue"])
def test_a_crash_at_every_step_of_a_compaction_leaves_the_same_answers(tmp_path, step, repair):
    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    with pytest.raises(RuntimeError, match="crash"):
        compact(lake, derived=derived_tables(), crash_after=step)
    assert answers(tmp_path) == expected
    if repair:
        assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
        assert answers(tmp_path) == expected
    compact(lake, derived=derived_tables(), vacuum_after_s=0)
    assert answers(tmp_path) == expected and lake.check() == []
    assert all("compacted-" in p for p in lake.view_files().files["matches"])


def test_a_language_recomputed_after_compaction_replaces_its_rows(tmp_path):
    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    compact(lake, derived=derived_tables(), vacuum_after_s=0)
    write_language(lake, "fra", np.random.default_rng(99), ckpt="c")  # recomputed: its own files again
    reference = _two_checkpoints(tmp_path / "ref")
    write_language(reference, "fra", np.random.default_rng(99), ckpt="c")
    assert lake.view_files().partial  # the compacted file is read without fra
    for reader in ("duckdb", "arrow"):
        assert answers(tmp_path, reader) == answers(tmp_path / "ref", reader)
    assert lake.check() == []
    compact(lake, derived=derived_tables(), vacuum_after_s=0)  # and compacted again
    assert not lake.view_files().partial and answers(tmp_path) == answers(tmp_path / "ref")
    assert lake.check() == []


def test_compaction_skips_a_checkpoint_a_live_run_writes_or_that_is_incomplete(tmp_path):
    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    with lake.acquire("m", "c", "base", "run-1"):
        done = compact(lake, derived=derived_tables())
    assert "m @ c" in done.skipped and "m @ d" in done.compacted
    (tmp_path / lake.language_file("neuron_counts", "m", "c", "fra")).unlink()
    assert "do not verify" in compact(lake, derived=derived_tables()).skipped["m @ c"]


def test_catalogue_and_compaction_on_s3_as_on_local_disk(s3_env, tmp_path):
    import uuid

    from neuronxa_ray.lake.compaction import compact

    uri = f"s3://{s3_env['bucket']}/catalog-{uuid.uuid4().hex[:8]}"
    local, remote = _two_checkpoints(tmp_path), _two_checkpoints(uri)
    expected = answers(tmp_path, "arrow")
    assert answers(uri) == expected
    with pytest.raises(RuntimeError, match="crash"):
        compact(remote, crash_after="markers", derived=derived_tables())
    assert answers(uri) == expected
    compact(remote, vacuum_after_s=0, derived=derived_tables())
    compact(local, vacuum_after_s=0, derived=derived_tables())
    assert answers(uri) == expected == answers(tmp_path, "arrow")
    assert remote.check() == [] and all("compacted-" in p for p in remote.view_files().files["matches"])
    assert main(["lake", "check", "--lake", uri, "--repair"]) == 0 and answers(uri) == expected


def test_readers_during_a_compaction_see_the_old_files_or_the_new_never_both(tmp_path):
    import threading

    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    done = threading.Event()
    seen, wrong = set(), []

    def read():
        while not done.is_set():
            files = lake.view_files().files["matches"]
            for ckpt in ("c", "d"):
                mine = [p for p in files if f"/checkpoint={ckpt}/" in p]
                seen.add((ckpt, tuple(sorted("compacted-" in p for p in mine))))
            if answers(tmp_path) != expected:
                wrong.append(files)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        compact(lake, "m", "c", derived=derived_tables())
        compact(lake, "m", "d", derived=derived_tables())
    finally:
        done.set()
        reader.join()
    assert not wrong
    assert {kinds for _, kinds in seen} <= {(False, False, False), (True,)}  # 3 languages' files, or one
    assert answers(tmp_path) == expected


@pytest.mark.parametrize("snapshot", [False, True])
def test_markers_rewritten_by_a_compaction_are_not_read_before_its_catalogue_entry(tmp_path, snapshot):
    """Between a compaction's marker rewrites and its one catalogue entry (the switch), readers see the old files
    only. A reader that re-read the markers already rewritten saw some languages on the compacted file and the
    others on their own (a suite run caught it: (False, False, True)); the answers stayed right (the compacted file
    is read for those languages' keys only), but the switch was not one step."""
    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    if snapshot:  # d compacted and folded into a snapshot: c is then opened from the snapshot's records
        compact(lake, "m", "d", derived=derived_tables())
        assert list((tmp_path / "_catalog").glob("snapshot*"))
    before = sorted(p for p in lake.view_files().files["matches"] if "/checkpoint=c/" in p)
    with pytest.raises(RuntimeError, match="crash halfway through the markers"):
        compact(lake, "m", "c", crash_after="markers", derived=derived_tables())
    rewritten = [p for p in (tmp_path / "_done").rglob("*.json") if "/checkpoint=c/" in str(p)]
    assert any(b"compacted_at" in p.read_bytes() for p in rewritten)  # some markers name the compacted file now
    assert sorted(p for p in lake.view_files().files["matches"] if "/checkpoint=c/" in p) == before
    assert answers(tmp_path) == expected
    compact(lake, "m", "c", derived=derived_tables())  # the next compaction completes the switch
    after = [p for p in lake.view_files().files["matches"] if "/checkpoint=c/" in p]
    assert len(after) == 1 and "compacted-" in after[0] and answers(tmp_path) == expected
    assert lake.check() == []


def test_compaction_of_a_checkpoint_with_two_pivots_keeps_shared_files_once(tmp_path):
    """A second pivot's markers name the same neuron_counts files (written once per language) and their own
    matches: the compacted neuron_counts holds each language once, and every view answers as before."""
    import torch

    from neuronxa_ray.compute.matching import match_stats
    from neuronxa_ray.lake import WrittenFile, matches_table
    from neuronxa_ray.lake.compaction import compact

    lake = _lake(tmp_path, ("eng", "fra", "deu", "swh"))
    rng = np.random.default_rng(7)
    for lang in ("fra", "deu", "swh"):  # pivot fra: its own marker, then two languages against it
        own = lake.completion("m", "c", "eng", lang)
        files = [WrittenFile.from_record(f) for f in own["files"] if f["table"] == "neuron_counts"]
        if lang != "fra":
            mats = {"nas": rng.uniform(-1, 1, size=(2, 4, 4))}
            stats = {m: match_stats(torch.from_numpy(c)).numpy() for m, c in mats.items()}
            path = lake.language_file("matches", "m", "c", lang, "fra")
            files.append(lake.write("matches", matches_table("m", "c", "fra", lang, stats), path))
        lake.mark_done("m", "c", "fra", lang, f"fp2-{lang}", {"checkpoint_fingerprint": "base"}, files)
    expected = answers(tmp_path)
    assert connect(tmp_path).execute("SELECT count(DISTINCT pivot_lang) FROM alignment").fetchone()[0] == 2
    compact(lake, derived=derived_tables(), vacuum_after_s=0)
    assert all("compacted-" in p for p in lake.view_files().files["neuron_counts"])
    assert answers(tmp_path) == expected and lake.check() == []


def test_a_catalogue_write_cut_short_is_tidied_once_it_is_old(tmp_path):
    import os
    import time

    lake = _lake(tmp_path)
    tmp = tmp_path / "_catalog" / "log" / ".0001-x.json.abc.tmp"
    tmp.write_bytes(b"{")
    assert lake.check() == []  # as young as a write in flight: not a problem
    old = time.time() - 120
    os.utime(tmp, (old, old))
    assert [p.kind for p in lake.check()] == ["temporary"]
    assert lake.tidy("m", "c", "run-x") == ["_catalog/log/.0001-x.json.abc.tmp"] and lake.check() == []


def test_tidy_removes_a_marker_write_cut_short(tmp_path):
    """An actor killed while it wrote a language's marker leaves a temporary file under _done (seen when a load
    round killed an actor mid-write): the tidy of the checkpoint's next run, or of the run that lost the actor,
    removes it like the data tables' temporaries; another checkpoint's is left for its own run."""
    lake = _lake(tmp_path)
    marker = tmp_path / lake.done_marker("m", "c", "eng", "fra")
    cut = marker.with_name(f".{marker.name}.867aa501.tmp")
    cut.write_bytes(b'{"model": "m", "chec')
    other = tmp_path / lake.done_marker("m", "other", "eng", "fra")
    other.parent.mkdir(parents=True)
    other_cut = other.with_name(f".{other.name}.1234.tmp")
    other_cut.write_bytes(b"{")
    assert sorted(p.kind for p in lake.check()) == ["temporary", "temporary"]
    assert lake.tidy("m", "c", "run-x") == [cut.relative_to(tmp_path).as_posix()]
    assert [p.path for p in lake.check()] == [other_cut.relative_to(tmp_path).as_posix()]
    assert lake.completion("m", "c", "eng", "fra") is not None  # the marker itself, and its files, untouched


# -- opening from the snapshot ---------------------------------------------------------------------------------
def _run_row(lake, ckpt):
    import datetime as dt

    import pyarrow as pa

    from neuronxa_ray.lake.schema import SCHEMAS

    def default(t):
        if pa.types.is_timestamp(t):
            return dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        return [] if pa.types.is_list(t) else "x" if pa.types.is_string(t) else 0

    row = {f.name: None if f.nullable else default(f.type) for f in SCHEMAS["runs"]}
    row.update(run_id=f"run-{ckpt}", model="m", checkpoint=ckpt, pivot_lang="eng", schema_version="2")
    lake.write_run(row)


def _grown(root, n_checkpoints):
    """A lake of n checkpoints (4 languages and a runs file each), compacted (which writes a snapshot)."""
    from neuronxa_ray.lake.compaction import compact

    rng = np.random.default_rng(n_checkpoints)
    lake = Lake(root)
    for i in range(n_checkpoints):
        for lang in ("eng", "fra", "deu", "swh"):
            write_language(lake, lang, rng, ckpt=f"c{i}")
        _run_row(lake, f"c{i}")
    compact(lake, derived=derived_tables(), vacuum_after_s=0)
    return lake


def _reads(lake, monkeypatch) -> int:
    """How many files opening the lake reads (markers, log entries, snapshots, Parquet footers)."""
    from neuronxa_ray.lake.storage import Storage

    count = {"n": 0}
    for name in ("read_bytes", "open_input_file"):
        original = getattr(Storage, name)

        def counted(self, *a, _original=original, **k):
            count["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(Storage, name, counted)
    lake.view_files()
    monkeypatch.undo()
    return count["n"]


def test_opening_reads_the_same_few_files_whatever_the_number_of_units(tmp_path, monkeypatch):
    small, large = _grown(tmp_path / "small", 2), _grown(tmp_path / "large", 8)
    assert _reads(small, monkeypatch) == _reads(large, monkeypatch) == 1  # the snapshot
    for lake in (small, large):
        write_language(lake, "ita", np.random.default_rng(5), ckpt="c1")  # a commit after the snapshot: its entry,
        _run_row(lake, "c9")  # a runs file newer than the snapshot: its footer, and c1's records from the snapshot
    assert _reads(small, monkeypatch) == _reads(large, monkeypatch) == 4
    assert [large.view_files().files[t] for t in ("matches", "runs")] == [
        _slow_view(large).files[t] for t in ("matches", "runs")
    ]


def _slow_view(lake):
    """What the views read from the whole catalogue, every marker's verdict recomputed (no snapshot verdicts)."""
    from neuronxa_ray.lake.catalog import Catalog
    from neuronxa_ray.lake.scan import ViewFiles, catalogued

    complete, _ = catalogued(lake, Catalog(lake.storage).load())
    free = {t: lake.view_files().files[t] for t in ("runs", "benchmarks", "attempts")}
    return ViewFiles.of(complete, free)


def _mutate(lake, root, how):
    rng = np.random.default_rng(11)
    if how == "truncated":
        path = root / lake.completion("m", "c1", "eng", "fra")["files"][0]["path"]
        path.write_bytes(path.read_bytes()[:-10])
    elif how == "marker-deleted":
        (root / lake.done_marker("m", "c0", "eng", "deu")).unlink()
    elif how == "entry-lost":  # a writer died between its marker and its catalogue entry
        write_language(lake, "ita", rng, ckpt="c1")
        newest = max((root / "_catalog" / "log").glob("*.json"))
        newest.unlink()
    elif how == "recomputed":  # after compaction: its own files again, the compacted file read without it
        write_language(lake, "fra", rng, ckpt="c0")
    elif how == "other-settings":
        for lang in ("ita", "spa"):
            write_language(lake, lang, rng, ckpt="c1", ckpt_fp="other")
    elif how == "pivot-gone":
        (root / lake.done_marker("m", "c2", "eng", "eng")).unlink()


@pytest.mark.parametrize(
    "how", ["none", "truncated", "marker-deleted", "entry-lost", "recomputed", "other-settings", "pivot-gone"]
)
def test_opening_from_the_snapshot_agrees_with_the_whole_catalogue(tmp_path, how, caplog):
    lake = _grown(tmp_path, 3)
    _mutate(lake, tmp_path, how)
    with caplog.at_level(logging.WARNING):
        fast = lake.view_files()
    slow = _slow_view(lake)
    assert fast == slow
    warned = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert bool(warned) == (how in ("truncated", "other-settings", "pivot-gone"))
    reference = _grown(tmp_path / "ref", 3)  # the same lake, mutated, opened without any snapshot: same answers
    _mutate(reference, tmp_path / "ref", how)
    import shutil

    for snap in (tmp_path / "ref" / "_catalog").glob("snapshot-*.parquet"):
        snap.unlink()
    shutil.rmtree(tmp_path / "ref" / "_catalog")
    assert answers(tmp_path) == answers(tmp_path / "ref")


@pytest.mark.parametrize("step", ["files", "markers", "catalogue"])
def test_compaction_after_a_run_that_crashes_is_a_warning_and_every_answer_stays(tmp_path, step, monkeypatch, caplog):
    import neuronxa_ray.lake.compaction as compaction

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    real = compaction.compact
    monkeypatch.setattr(compaction, "compact", lambda *a, **k: real(*a, **k, crash_after=step))
    with caplog.at_level(logging.WARNING):
        assert compaction.compact_after_run(lake, [("m", "c"), ("m", "d")], derived_tables()) is None
    assert "not compacted after the run" in caplog.text and "crash" in caplog.text
    assert answers(tmp_path) == expected
    monkeypatch.undo()
    # the next run's end finishes the job
    done = compaction.compact_after_run(lake, [("m", "c"), ("m", "d")], derived_tables())
    assert done is not None and not done.skipped.get("m @ d")
    assert answers(tmp_path) == expected and lake.check() == []
    assert all("compacted-" in p for p in lake.view_files().files["matches"])


def test_a_snapshot_without_verdicts_opens_as_before(tmp_path, monkeypatch):
    """A snapshot whose verdicts could not be computed (or written before they existed) is read in full."""
    import neuronxa_ray.lake.catalog as catalog

    lake = _grown(tmp_path, 2)
    expected = answers(tmp_path)

    def cannot(*a, **k):
        raise KeyError("model")

    monkeypatch.setattr(catalog, "visible", cannot)
    catalog.Catalog(lake.storage).fold()
    monkeypatch.undo()
    assert lake.view_files() == _slow_view(lake) and answers(tmp_path) == expected


def _live_rows(root) -> int:
    """matches rows the score views count at query time (the rest: hits stored by a compaction)."""
    return connect(root).execute("SELECT count(*) FROM _matches_live").fetchone()[0]


def test_compaction_stores_the_hits_the_views_count_and_they_equal_the_live_counts(tmp_path):
    """After a compaction the score views read layer_hits / sentence_hits as stored (no matches row is counted at
    query time) and those equal the same counts over every matches row; a recomputed language is counted live
    until the next compaction."""
    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    total = connect(tmp_path).execute("SELECT count(*) FROM matches").fetchone()[0]
    assert _live_rows(tmp_path) == total > 0  # nothing stored yet
    compact(lake, derived=derived_tables(), vacuum_after_s=0)
    assert _live_rows(tmp_path) == 0 and answers(tmp_path) == expected
    files = lake.view_files().files
    assert all(len(files[t]) == 2 for t in ("matches", "layer_hits", "sentence_hits", "alignment_interval"))
    con = connect(tmp_path)
    con.execute("CREATE TEMP VIEW every_hit AS SELECT * FROM sentence_hits_of('matches')")
    for table, computed, last in (
        ("layer_hits", "layer_hits_of('matches')", "layer"),
        ("sentence_hits", "sentence_hits_of('matches')", "sentence"),
        ("alignment_interval", "alignment_interval_of('every_hit', 0.95, 1000, 0)", "lang"),
    ):
        key = f"checkpoint, pivot_lang, lang, method, {last}"
        stored = con.execute(f"SELECT * FROM _stored_{table} ORDER BY {key}").fetchall()
        live = con.execute(f"SELECT * FROM {computed} ORDER BY {key}").fetchall()
        assert len(stored) == len(live) > 0, table
        assert stored == live, table  # bit for bit (the sums of 1 / rank are ordered by sentence)
    write_language(lake, "fra", np.random.default_rng(99), ckpt="c")  # recomputed: counted live, the rest stored
    fra = connect(tmp_path).execute("SELECT count(*) FROM matches WHERE lang = 'fra' AND checkpoint = 'c'").fetchone()
    assert _live_rows(tmp_path) == fra[0] > 0
    reference = _two_checkpoints(tmp_path / "ref")
    write_language(reference, "fra", np.random.default_rng(99), ckpt="c")
    for reader in ("duckdb", "arrow"):
        assert answers(tmp_path, reader) == answers(tmp_path / "ref", reader)
    assert lake.check() == []


def test_a_lake_compacted_before_hits_were_stored_gets_them_at_the_next_compaction(tmp_path):
    from neuronxa_ray.lake import compaction

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    compaction.compact(lake, vacuum_after_s=0)  # nothing derived: as compactions did before stored rows existed
    assert not lake.view_files().files["layer_hits"] and _live_rows(tmp_path) > 0
    assert answers(tmp_path) == expected
    assert not compaction.compact(lake).compacted  # without them to store, nothing to do
    done = compaction.compact(lake, derived=derived_tables(), vacuum_after_s=0)
    assert sorted(done.compacted) == ["m @ c", "m @ d"]  # compacted again, for the hits
    assert _live_rows(tmp_path) == 0 and answers(tmp_path) == expected and lake.check() == []
    assert not compaction.compact(lake, derived=derived_tables()).compacted  # then nothing left to do


def total_rows(root) -> int:
    return connect(root).execute("SELECT count(*) FROM matches").fetchone()[0]


def test_rows_stored_by_other_view_definitions_are_counted_live_then_replaced(tmp_path):
    """Stored rows carry the version of the views that computed them (a hash of sql/15_hits.sql, 25_intervals.sql
    and the bootstrap's code): after an upgrade that changes them, the views count those checkpoints live (never a
    mix of two definitions) and the next compaction stores them again."""
    import dataclasses

    from neuronxa_ray.lake.compaction import compact

    lake = _two_checkpoints(tmp_path)
    expected = answers(tmp_path)
    compact(lake, derived=dataclasses.replace(derived_tables(), version="0ther0ld00"), vacuum_after_s=0)
    assert all(".0ther0ld00.parquet" in p for p in lake.view_files().files["layer_hits"])
    assert _live_rows(tmp_path) == total_rows(tmp_path) > 0  # another version: not read
    assert answers(tmp_path) == expected
    total = connect(tmp_path).execute("SELECT count(*) FROM matches").fetchone()[0]
    assert _live_rows(tmp_path) == total > 0 and answers(tmp_path) == expected
    assert sorted(compact(lake, derived=derived_tables(), vacuum_after_s=0).compacted) == ["m @ c", "m @ d"]
    assert _live_rows(tmp_path) == 0 and answers(tmp_path) == expected and lake.check() == []
    assert not any("0ther0ld00" in p for t in ("layer_hits", "sentence_hits") for p in lake.view_files().files[t])


def test_a_run_that_takes_the_lease_while_hits_are_derived_keeps_its_markers(tmp_path):
    import dataclasses

    from neuronxa_ray.lake import compaction

    lake = _two_checkpoints(tmp_path)
    derived = derived_tables()
    held = []

    def derive_then_a_run_starts(matches):
        out = derived.rows(matches)
        if not held:
            held.append(lake.acquire("m", "c", "base", "run-late").__enter__())  # a run starts writing c
        return out

    markers = {p: (tmp_path / p).read_bytes() for p in lake.markers("_done/model=m/checkpoint=c/")}
    slow = dataclasses.replace(derived, rows=derive_then_a_run_starts)
    done = compaction.compact(lake, model="m", checkpoint="c", vacuum_after_s=0, derived=slow)
    assert "started writing it" in done.skipped["m @ c"]
    assert {p: (tmp_path / p).read_bytes() for p in markers} == markers  # not one marker rewritten
