"""Damage a bad-input sweep found: whatever the lake's state, a broken marker is said (never silently dropped), a
directory where a data file belongs is named and cleared by repair, and an unreadable catalogue file is named and
replaced by repair."""

import logging
import shutil
import uuid

import numpy as np
import pytest
from test_lake import write_language
from test_lake_catalog import _lake, answers

from neuronxa_ray.cli import main
from neuronxa_ray.lake import Lake
from neuronxa_ray.lake.catalog import Catalog
from neuronxa_ray.lake.compaction import compact
from neuronxa_ray.query import connect
from neuronxa_ray.query.connect import derived_tables

LANGS = ("eng", "fra", "deu", "ita")


# -- broken markers: left out with one line, with or without a catalogue --------------------------------------------
def _opened(root, caplog):
    """(what the views read, the left-out lines opening the lake warns, without the lake's name)."""
    lake = Lake(root)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        view = lake.view_files()
    lines = [r.getMessage().removeprefix(f"lake {lake.uri}: ") for r in caplog.records]
    return view, [line for line in lines if "left out of the views" in line]


@pytest.mark.parametrize("catalogue", ["log", "snapshot", "compacted"])
def test_broken_markers_are_left_out_alike_with_and_without_a_catalogue(tmp_path, catalogue, caplog):
    """An empty marker and one that is JSON but no marker: the same left-out line and the same views whether the
    lake is opened from its catalogue (log entries only, a snapshot, a compacted checkpoint) or marker by marker."""
    root, bare = tmp_path / "lake", tmp_path / "bare"
    lake = _lake(root, LANGS)
    if catalogue == "snapshot":
        Catalog(lake.storage).fold()
    elif catalogue == "compacted":
        compact(lake, derived=derived_tables(), vacuum_after_s=0)
    deu, ita = (lake.done_marker("m", "c", "eng", lang) for lang in ("deu", "ita"))
    (root / deu).write_bytes(b"")
    (root / ita).write_text("[1, 2, 3]")
    shutil.copytree(root, bare)
    shutil.rmtree(bare / "_catalog")  # the same lake, read marker by marker
    view, lines = _opened(root, caplog)
    assert (view, lines) == _opened(bare, caplog)
    assert len(lines) == 1 and lines[0].startswith("2 language(s) left out of the views: 2 whose files are missing")
    assert deu in lines[0] and ita in lines[0]
    assert answers(root) == answers(bare)
    assert connect(root).execute("SELECT DISTINCT lang FROM alignment").fetchall() == [("fra",)]
    assert [p.path for p in lake.check() if p.kind == "broken"] == [deu, ita]  # their files: orphaned


# -- a directory where a data file belongs ------------------------------------------------------------------------
def test_a_directory_where_a_data_file_belongs_is_named_and_repair_clears_it(tmp_path):
    lake = _lake(tmp_path, ("eng", "fra", "tur"))
    rel = lake.language_file("matches", "m", "c", "tur", "eng")
    (tmp_path / rel).unlink()
    (tmp_path / rel).mkdir()
    (tmp_path / rel / "left.txt").write_text("what a hand put there")
    marker = lake.done_marker("m", "c", "eng", "tur")
    problems = lake.check()
    assert [(p.kind, p.path) for p in problems] == [("broken", marker)]
    assert f"{rel} is a directory, not a file" in problems[0].detail
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert not (tmp_path / rel).exists() and lake.check() == []
    write_language(lake, "tur", np.random.default_rng(3))  # the rerun writes there
    assert lake.completion("m", "c", "eng", "tur") is not None and lake.check() == []


def test_repair_never_deletes_a_directory_a_marker_names_outside_a_data_files_place(tmp_path):
    """A marker is not trusted to name what repair deletes: a path outside the lake, a whole partition holding
    other languages' files, or a table directory stay; only the marker (and files only it names) go."""
    import json

    root = tmp_path / "lake"
    lake = _lake(root, ("eng", "fra", "deu", "ita"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("not the lake's")
    marker = root / lake.done_marker("m", "c", "eng", "ita")
    record = json.loads(marker.read_text())
    extra = ["../outside", "matches/model=m/checkpoint=c", "matches", "matches/model=m/checkpoint=c/x/../y.parquet"]
    record["files"] += [{**record["files"][0], "path": path} for path in extra]
    marker.write_text(json.dumps(record))
    assert main(["lake", "check", "--lake", str(root), "--repair"]) == 0
    assert (tmp_path / "outside" / "keep.txt").is_file()
    assert {r[0] for r in connect(root).execute("SELECT DISTINCT lang FROM alignment").fetchall()} == {"fra", "deu"}
    assert lake.check() == []


def test_keys_under_a_data_objects_name_are_named_and_cleared_on_s3(s3_env):
    """On an object store a directory is keys under the object's name: S3 stores backed by a filesystem (SeaweedFS
    here, MinIO) may refuse the object then, so check names it and repair deletes those keys as locally."""
    lake = _lake(f"s3://{s3_env['bucket']}/damage-{uuid.uuid4().hex[:8]}", ("eng", "fra", "tur"))
    rel = lake.language_file("matches", "m", "c", "tur", "eng")
    lake.storage.delete(rel)
    lake.storage.write_bytes(f"{rel}/left.txt", b"what a hand put there")
    problems = lake.check()
    assert [p.path for p in problems] == [lake.done_marker("m", "c", "eng", "tur")]
    assert f"{rel} is a directory, not a file" in problems[0].detail
    assert main(["lake", "check", "--lake", lake.uri, "--repair"]) == 0 and lake.check() == []
    assert not lake.storage.list(rel)
    write_language(lake, "tur", np.random.default_rng(3))  # the rerun writes there
    assert lake.completion("m", "c", "eng", "tur") is not None and lake.check() == []


# -- an unreadable catalogue file ---------------------------------------------------------------------------------
def _damage(root, lake, what):
    """Make one catalogue file unreadable; returns its path."""
    catalog = Catalog(lake.storage)
    if what.startswith("entry"):  # not JSON of an object; JSON of an entry of the wrong shape (two kinds)
        rel = catalog.append()
        text = {"entry": "[1, 2, 3]", "entry-markers-list": '{"markers": [1]}'}
        (root / rel).write_text(text.get(what, '{"markers": {"_done/x.json": 5}}'))
        return rel
    rel = catalog.fold()
    if what == "future-snapshot":  # named after the snapshot a repair writes (a writer's clock ahead)
        (root / rel).rename(root / "_catalog" / "snapshot-99999999999999999999-future.parquet")
        rel = "_catalog/snapshot-99999999999999999999-future.parquet"
    (root / rel).write_bytes(b"")
    return rel


@pytest.mark.parametrize("what", ["snapshot", "future-snapshot", "entry", "entry-markers-list", "entry-record-number"])
def test_an_unreadable_catalogue_file_is_named_and_repair_replaces_it(tmp_path, what, caplog):
    lake = _lake(tmp_path, LANGS)
    older = Catalog(lake.storage).fold()  # a readable snapshot a concurrent reader may still read: it stays
    expected = answers(tmp_path)
    rel = _damage(tmp_path, lake, what)
    with caplog.at_level(logging.WARNING):
        assert answers(tmp_path) == expected
    assert f"the catalogue is unreadable ({rel}: " in caplog.text
    problems = lake.check()
    assert [(p.kind, p.path) for p in problems] == [("catalogue", rel)]
    assert "unreadable" in problems[0].detail
    assert "0 bytes" in problems[0].detail if "snapshot" in what else "not an object" in problems[0].detail
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert not (tmp_path / rel).exists() and (tmp_path / older).exists()
    assert lake.check() == []
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert answers(tmp_path) == expected
    assert "unreadable" not in caplog.text


def test_a_run_goes_on_over_an_unreadable_catalogue(tmp_path, caplog):
    """A run takes its lease, then brings the catalogue in line with its checkpoint (tidy): an unreadable catalogue
    file failed the run there. It is now a warning; the run writes its languages (readers read every marker), and
    `lake check --repair` rebuilds the catalogue with them."""
    lake = _lake(tmp_path, LANGS[:3])
    rel = _damage(tmp_path, lake, "snapshot")
    with caplog.at_level(logging.WARNING):
        lake.acquire("m", "c", "base", "run-x")
        assert lake.tidy("m", "c", "run-x") == []
    assert f"the catalogue is unreadable ({rel}: " in caplog.text
    write_language(lake, "ita", np.random.default_rng(3))
    assert "ita" in {r[0] for r in connect(tmp_path).execute("SELECT lang FROM alignment").fetchall()}
    assert main(["lake", "check", "--lake", str(tmp_path), "--repair"]) == 0
    assert lake.check() == []


def test_a_marker_deleted_after_the_listing_is_gone_not_broken(tmp_path):
    """A marker that another process deleted between the listing and its reading (a repair, a --force run) is
    gone, as the catalogue's path says; one that is there but does not read is broken (None)."""
    from neuronxa_ray.lake.catalog import CatalogState
    from neuronxa_ray.lake.scan import _listed_markers

    lake = _lake(tmp_path, ("eng", "fra", "deu"))
    fra, deu = lake.done_marker("m", "c", "eng", "fra"), lake.done_marker("m", "c", "eng", "deu")
    (tmp_path / deu).write_bytes(b"")
    listed = {fra: 10, deu: 0, lake.done_marker("m", "c", "eng", "ita"): 10}  # ita: deleted since the listing
    assert _listed_markers(lake, CatalogState(), listed) == {fra: lake.completion("m", "c", "eng", "fra"), deu: None}
