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

from neuronxa_ray.lake.catalog import KEY, CatalogState, entry_name, is_entry, is_snapshot
from neuronxa_ray.lake.catalog import ROOT as CATALOG_ROOT
from neuronxa_ray.lake.layout import is_parquet
from neuronxa_ray.lake.markers import MarkerSource
from neuronxa_ray.lake.scan import (
    Problem,
    ViewFiles,
    catalog_state,
    catalogued,
    listed_markers,
    scan,
    summarise_left_out,
    unreadable,
)
from neuronxa_ray.lake.schema import FREE_TABLES, PAIR_TABLES, TABLES_WITH_MARKERS

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
    markers = table.column("marker").to_pylist()
    parts = [checkpoint_of(m) for m in markers]
    dirty = {checkpoint_of(rel) for _, entry in entries for rel in (entry.get("markers") or {})}
    known = set(markers)
    dirty.update(checkpoint_of(rel) for rel in done if rel not in known)
    for rel, part, n in zip(markers, parts, table.column("marker_bytes").to_pylist()):
        if n is None or done.get(rel) != n:
            dirty.add(part)
    files = table.column("files").combine_chunks()
    flat = pc.list_flatten(files)
    owner = pc.list_parent_indices(files).to_pylist()
    paths = flat.field("path").to_pylist()
    for i, path, n in zip(owner, paths, flat.field("bytes").to_pylist()):
        if sizes.get(path) != n:
            dirty.add(parts[i])

    shown = table.column("visible").to_pylist()
    clean_rows = [i for i, part in enumerate(parts) if part not in dirty]
    left_out = [
        (reason, label)
        for i, reason, label in zip(
            range(len(parts)), table.column("left_out").to_pylist(), table.column("left_out_label").to_pylist()
        )
        if reason is not None and parts[i] not in dirty
    ]
    visible_rows = {i for i in clean_rows if shown[i]}
    pivots, langs = table.column("pivot_lang").to_pylist(), table.column("lang").to_pylist()
    tables = flat.field("table").to_pylist()
    rows = flat.field("rows").to_pylist()
    file_rows = flat.field("file_rows").to_pylist()
    view_entries = [
        (t, p, r, fr, (pivots[i], langs[i]) if t in PAIR_TABLES else (langs[i],))
        for i, t, p, r, fr in zip(owner, tables, paths, rows, file_rows)
        if i in visible_rows
    ]
    if dirty:  # those checkpoints as before: their records (snapshot, then the log), checked against the listings
        state = _records_of(storage, snaps[-1], table, parts, dirty)
        for name, entry in entries:
            state.apply(name, entry)
        complete, more = catalogued(lake, state, {p: n for p, n in done.items() if checkpoint_of(p) in dirty}, sizes)
        left_out += more
        for record in complete:
            for f in record["files"]:
                key = (record["pivot_lang"], record["lang"]) if f["table"] in PAIR_TABLES else (record["lang"],)
                view_entries.append((f["table"], f["path"], f["rows"], f.get("file_rows"), key))
    free, bad_free = _free_files(lake, {k: int(v) for k, v in (meta.get("free") or {}).items()}, workers)
    return ViewFiles.of_entries(view_entries, free), left_out, bad_free


def _read_entries(storage, pending: list[str], workers: int) -> list[tuple[str, dict]]:
    """(entry name, entry) of each log entry, in name order."""

    def read(rel: str) -> dict:
        entry = json.loads(storage.read_bytes(rel))
        if not isinstance(entry, dict):
            raise ValueError(f"catalogue entry {rel} is not an object")
        return entry

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending)))) as pool:
        return [(entry_name(rel), e) for rel, e in zip(pending, pool.map(read, pending))]


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
