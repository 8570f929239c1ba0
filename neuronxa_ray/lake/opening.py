"""Opening the lake for the views: what they read, in a bounded number of reads whatever the number of units.

The newest catalogue snapshot keeps, per marker, what the views make of it (visible, or left out and why) when
every file of its checkpoint is as recorded, and which runs/benchmarks/attempts files read (path -> bytes).
Opening reads that snapshot (not its record column), the log entries it has not folded, and lists _done/, the
tables and the catalogue once each. A checkpoint is *clean* when the listings agree with the snapshot: every
marker of it listed at its recorded size and none more, every file its markers name listed at the recorded size,
and no unfolded log entry names it; the snapshot's verdicts then stand. A checkpoint that is not clean (a run
writing it, a file changed, a marker added or deleted by hand) is read as before (scan.catalogued: its records,
markers the catalogue lacks read, files checked against the listing, the consistency rules). This is exact
because the rules are local to a checkpoint (a language's pivot and a pair's sources are markers of its own
checkpoint). Reads: the snapshot, the unfolded log entries (a writer folds them every FOLD_EVERY), the
footers of runs/benchmarks/attempts files newer than the snapshot, and the markers the catalogue lacks; a
snapshot written before these columns, or none, falls back to scan.catalogued over the whole catalogue.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neuronxa_ray.lake.catalog import KEY, CatalogState, entry_name, is_entry, is_snapshot, read_entry
from neuronxa_ray.lake.catalog import ROOT as CATALOG_ROOT
from neuronxa_ray.lake.layout import is_parquet
from neuronxa_ray.lake.markers import MarkerSource
from neuronxa_ray.lake.scan import (
    ViewFiles,
    catalog_state,
    catalogued,
    listed_markers,
    scan,
    summarise_left_out,
    unreadable,
)
from neuronxa_ray.lake.schema import FREE_TABLES, PAIR_TABLES, TABLES_WITH_MARKERS
from neuronxa_ray.lake.visibility import Problem

log = logging.getLogger(__name__)

_COLUMNS = ["marker", "marker_bytes", "pivot_lang", "lang", "files", "visible", "left_out", "left_out_label"]


def checkpoint_of(marker: str) -> str:
    """A marker's checkpoint partition: `_done/model=M/checkpoint=C` of `_done/model=M/checkpoint=C/...json`."""
    return "/".join(marker.split("/", 3)[:3])


def view_files(lake: MarkerSource, workers: int = 16) -> ViewFiles:
    """What the views read: the files of complete, consistent languages (from the catalogue when the lake has
    one, checked against one listing of each table's sizes; else from every marker, verified), and the runs,
    benchmarks and attempts files whose Parquet footer reads. What is left out is said in one line."""
    try:
        opened = _from_snapshot(lake, workers)
    except (OSError, ValueError, pa.ArrowException) as e:  # read the whole catalogue instead (it says what is wrong)
        log.info("lake %s: opened without the snapshot's verdicts (%s)", lake.uri, e)
        opened = None
    if opened is not None:
        view, left_out, bad_free = opened
    else:
        state = catalog_state(lake)
        if state is None:
            scanned = scan(lake, workers)
            left_out, free = scanned.left_out, scanned.free
            bad_free = [p for p in scanned.problems if p.path.split("/", 1)[0] in FREE_TABLES]
            complete = scanned.complete
        else:
            complete, left_out = catalogued(lake, state)
            free, bad_free = _free_files(lake, {}, workers)
        view = ViewFiles.of(complete, free)
    if left_out:
        log.warning("lake %s: %s", lake.uri, summarise_left_out(left_out))
    for p in bad_free:
        log.warning("lake %s: skipped unreadable file %s (%s)", lake.uri, p.path, p.detail)
    return view


def _free_files(lake: MarkerSource, known: dict[str, int], workers: int) -> tuple[dict[str, list[str]], list[Problem]]:
    """runs/benchmarks/attempts files whose footer reads (known: path -> bytes already found readable), and a
    problem for each that does not."""
    listed = {p: n for t in FREE_TABLES for p, n in lake.storage.sizes(t).items() if is_parquet(p)}
    unknown = sorted(p for p, n in listed.items() if known.get(p) != n)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unknown)))) as pool:
        why = dict(zip(unknown, pool.map(lambda rel: unreadable(lake.storage, rel), unknown)))
    paths = sorted(p for p in listed if not why.get(p))
    free = {t: [p for p in paths if p.startswith(t + "/")] for t in FREE_TABLES}
    return free, [Problem("broken", p, w, (p,)) for p, w in why.items() if w]


def _from_snapshot(lake: MarkerSource, workers: int) -> tuple[ViewFiles, list[tuple[str, str]], list[Problem]] | None:
    """(the views' files, left-out lines, unreadable free files) from the newest snapshot and the listings, or
    None when the lake has no snapshot with the views' columns (then the caller reads the whole catalogue)."""
    storage = lake.storage
    for attempt in range(5):
        listed_catalog = storage.sizes(CATALOG_ROOT)
        snaps = sorted(p for p in listed_catalog if is_snapshot(p))
        if not snaps:
            return None
        try:
            with storage.open_input_file(snaps[-1]) as src:
                parquet = pq.ParquetFile(src)
                if "visible" not in parquet.schema_arrow.names:
                    return None
                meta = json.loads((parquet.schema_arrow.metadata or {}).get(KEY, b"{}"))
                table = parquet.read(columns=_COLUMNS)
            folded = set(meta.get("folded", []))
            pending = sorted((p for p in listed_catalog if is_entry(p) and entry_name(p) not in folded), key=entry_name)
            entries = _read_entries(storage, pending, workers)
            break
        except FileNotFoundError:  # a folder removed what this listing named: list again
            if attempt == 4:
                raise
    done = listed_markers(lake)
    sizes = {p: n for t in TABLES_WITH_MARKERS for p, n in storage.sizes(t).items()}
    markers = table.column("marker").combine_chunks()
    parts = pc.replace_substring_regex(markers, r"^([^/]*/[^/]*/[^/]*)/.*$", r"\1")  # checkpoint_of, vectorised
    dirty = {checkpoint_of(rel) for _, entry in entries for rel in (entry.get("markers") or {})}
    # markers: listed at the snapshot's size, none missing, none more
    listed = pa.table(
        {"marker": pa.array(list(done), pa.string()), "listed": pa.array(list(done.values()), pa.int64())}
    )
    recorded = pa.table({"marker": markers, "recorded": table.column("marker_bytes").combine_chunks()})
    joined = recorded.join(listed, "marker", join_type="full outer")
    differ = pc.invert(pc.fill_null(pc.equal(joined["recorded"], joined["listed"]), False))
    dirty.update(checkpoint_of(m) for m in joined.filter(differ)["marker"].to_pylist())
    # files: every file a marker names listed at its recorded size
    files = table.column("files").combine_chunks()
    flat = pc.list_flatten(files)
    owner = pc.list_parent_indices(files)
    on_disk = pa.table({"path": pa.array(list(sizes), pa.string()), "size": pa.array(list(sizes.values()), pa.int64())})
    named = pa.table({"owner": owner, "path": flat.field("path"), "bytes": flat.field("bytes")})
    checked = named.join(on_disk, "path", join_type="left outer")
    changed = pc.invert(pc.fill_null(pc.equal(checked["bytes"], checked["size"]), False))
    dirty.update(parts.take(checked.filter(changed)["owner"]).to_pylist())
    dirty.update(parts.filter(pc.is_null(table.column("visible").combine_chunks())).to_pylist())  # no verdict

    clean = pc.invert(pc.is_in(parts, pa.array(sorted(dirty), pa.string())))
    left = table.filter(pc.and_(clean, pc.is_valid(table.column("left_out"))))
    left_out = list(zip(left.column("left_out").to_pylist(), left.column("left_out_label").to_pylist()))
    shown = pc.and_(clean, table.column("visible").combine_chunks())
    view = pa.table(
        {
            "table": flat.field("table"),
            "path": flat.field("path"),
            "rows": flat.field("rows"),
            "file_rows": flat.field("file_rows"),
            "pivot_lang": table.column("pivot_lang").combine_chunks().take(owner),
            "lang": table.column("lang").combine_chunks().take(owner),
        }
    ).filter(shown.take(owner))
    if dirty:  # those checkpoints as before: their records (snapshot, then the log), checked against the listings
        state = _records_of(storage, snaps[-1], table, parts.to_pylist(), dirty)
        for name, entry in entries:
            state.apply(name, entry)
        complete, more = catalogued(lake, state, {p: n for p, n in done.items() if checkpoint_of(p) in dirty}, sizes)
        left_out += more
        rows = [(f["table"], f["path"], f["rows"], f.get("file_rows"), r["pivot_lang"], r["lang"])
                for r in complete for f in r["files"]]  # fmt: skip
        view = pa.concat_tables([view, pa.Table.from_pylist([dict(zip(view.column_names, r)) for r in rows],
                                                            schema=view.schema)])  # fmt: skip
    free, bad_free = _free_files(lake, {k: int(v) for k, v in (meta.get("free") or {}).items()}, workers)
    return _view_files(view, free), left_out, bad_free


def _view_files(view: pa.Table, free: dict[str, list[str]]) -> ViewFiles:
    """ViewFiles.of_entries over a table of (table, path, rows, file_rows, pivot_lang, lang), one row per file a
    complete language names, computed in Arrow: distinct paths per table, and for each compacted file whose
    current languages' rows do not add up to the whole file, those languages' keys."""
    files = {t: [] for t in (*TABLES_WITH_MARKERS, *FREE_TABLES)}
    for t in TABLES_WITH_MARKERS:
        files[t] = sorted(set(view.filter(pc.equal(view["table"], t))["path"].to_pylist()))
    for t, paths in free.items():
        files[t] = sorted(set(files[t]) | set(paths))
    compacted = view.filter(pc.is_valid(view["file_rows"]))
    partial: dict[str, dict[str, list[tuple[str, ...]]]] = {}
    if compacted.num_rows:
        pairs = pc.binary_join_element_wise(compacted["pivot_lang"], compacted["lang"], "\x00")
        is_pair = pc.is_in(compacted["table"], pa.array(sorted(PAIR_TABLES)))
        keyed = compacted.append_column("key", pc.if_else(is_pair, pairs, compacted["lang"]))
        per_key = keyed.group_by(["table", "path", "key"]).aggregate([("rows", "max"), ("file_rows", "max")])
        per_file = per_key.group_by(["table", "path"]).aggregate([("rows_max", "sum"), ("file_rows_max", "max")])
        short = per_file.filter(pc.not_equal(per_file["rows_max_sum"], per_file["file_rows_max_max"]))
        for t, path in zip(short["table"].to_pylist(), short["path"].to_pylist()):
            mine = per_key.filter(pc.equal(per_key["path"], path))["key"].to_pylist()
            partial.setdefault(t, {})[path] = sorted(tuple(k.split("\x00")) for k in mine)
    return ViewFiles(files, partial)


def _read_entries(storage, pending: list[str], workers: int) -> list[tuple[str, dict]]:
    """(entry name, entry) of each log entry, in name order."""

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending)))) as pool:
        entries = pool.map(lambda rel: read_entry(storage, rel), pending)  # ValueError: of the wrong shape
        return [(entry_name(rel), e) for rel, e in zip(pending, entries)]


def _records_of(storage, snapshot: str, table: pa.Table, parts: list[str], dirty: set[str]) -> CatalogState:
    """The snapshot's records (and marker sizes) of the dirty checkpoints: only the row groups holding them."""
    wanted = [i for i, part in enumerate(parts) if part in dirty]
    state = CatalogState()
    if not wanted:
        return state
    with storage.open_input_file(snapshot) as src:
        parquet = pq.ParquetFile(src)
        counts = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        starts = list(itertools.accumulate(counts, initial=0))[:-1]  # the first row of each group
        groups = sorted({bisect.bisect_right(starts, i) - 1 for i in wanted})
        records = parquet.read_row_groups(groups, columns=["record"]).column("record").to_pylist()
    offset = dict(zip(groups, itertools.accumulate([counts[g] for g in groups], initial=0)))  # group -> its 1st
    sizes = table.column("marker_bytes").to_pylist()
    markers = table.column("marker").to_pylist()
    for i in wanted:
        g = bisect.bisect_right(starts, i) - 1
        record = json.loads(records[offset[g] + i - starts[g]])
        state.markers[markers[i]] = record
        if sizes[i]:
            state.sizes[markers[i]] = sizes[i]
    return state
