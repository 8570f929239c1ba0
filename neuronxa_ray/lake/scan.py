"""Which languages the views count: every marker verified against its files, the consistency rules over the verified
ones (pivot agreement, precision, pair sources), and what is broken, stale, orphaned or left over.

Reads markers through the Lake (MarkerSource), so the lake stays the one place they are read.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from neuronxa_ray.lake.catalog import Catalog, CatalogState, UnreadableCatalog, stale_temporary
from neuronxa_ray.lake.layout import done_marker, is_parquet, is_temporary, reject_schema_1
from neuronxa_ray.lake.leases import LEASE_TIMEOUT_S, lease_alive, read_lease
from neuronxa_ray.lake.markers import MarkerSource
from neuronxa_ray.lake.schema import FREE_TABLES, PAIR_TABLES, TABLES_WITH_MARKERS
from neuronxa_ray.lake.storage import Entry, Storage
from neuronxa_ray.lake.visibility import (
    LEFT_OUT_BROKEN,
    Problem,
    label_of,
    visible,
)

log = logging.getLogger(__name__)


@dataclass
class Scan:
    """Every marker of the lake, verified: the complete languages and what is wrong with the rest."""

    complete: list[dict]  # marker records that verify and agree with their pivot's checkpoint_fingerprint
    problems: list[Problem]
    excluded: list[str]  # one line per language left out of the views, and why
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (reason, "model @ checkpoint: lang")
    free: dict[str, list[str]] = field(default_factory=dict)  # runs/benchmarks/attempts files whose footer reads
    parsed: dict[str, dict] = field(default_factory=dict)  # marker path -> record, for every valid marker
    catalog: CatalogState | None = None  # the catalogue as read during the scan
    catalog_unreadable: UnreadableCatalog | None = None  # else the catalogue file that did not read, if one


def summarise_left_out(left_out: list[tuple[str, str]], names: int = 8) -> str:
    """One line for every language left out of the views: counts per reason, a few names each."""
    by_reason: dict[str, dict[str, list[str]]] = {}
    for reason, label in left_out:
        where, _, lang = label.partition(": ")
        by_reason.setdefault(reason, {}).setdefault(where, []).append(lang)
    parts = []
    for reason, where in by_reason.items():
        n = sum(len(v) for v in where.values())
        shown = []
        for place, langs in list(where.items())[:3]:
            more = f" +{len(langs) - names}" if len(langs) > names else ""
            shown.append(f"{place}: {', '.join(sorted(langs)[:names])}{more}".strip(": "))
        extra = f"; +{len(where) - 3} checkpoint(s)" if len(where) > 3 else ""
        parts.append(f"{n} {reason} ({'; '.join(shown)}{extra})")
    total = len(left_out)
    return (
        f"{total} language(s) left out of the views: {'; '.join(parts)} (`neuronxa-ray lake check` lists each, "
        "`--repair` removes them for a rerun)"
    )


@dataclass
class ViewFiles:
    """What the views read: table -> files, and for compacted files of which only some languages are current,
    file -> the (pivot_lang, lang) keys (pair tables) or (lang,) keys to read from it."""

    files: dict[str, list[str]]
    partial: dict[str, dict[str, list[tuple[str, ...]]]] = field(default_factory=dict)

    @classmethod
    def of(cls, complete: list[dict], free: dict[str, list[str]]) -> ViewFiles:
        """From complete marker records and the readable runs/benchmarks/attempts files."""
        entries = [
            (
                f["table"],
                f["path"],
                f["rows"],
                f.get("file_rows"),
                (record["pivot_lang"], record["lang"]) if f["table"] in PAIR_TABLES else (record["lang"],),
            )
            for record in complete
            for f in record["files"]
        ]
        return cls.of_entries(entries, free)

    @classmethod
    def of_entries(
        cls, entries: list[tuple[str, str, int, int | None, tuple[str, ...]]], free: dict[str, list[str]]
    ) -> ViewFiles:
        """From (table, path, rows, file_rows, key) of every file a complete language's marker names (key: its
        (pivot_lang, lang) for pair tables, (lang,) else; file_rows set for a compacted file)."""
        files: dict[str, dict[str, None]] = {t: {} for t in (*TABLES_WITH_MARKERS, *FREE_TABLES)}
        keys: dict[str, dict[tuple[str, ...], int]] = {}  # compacted file -> current key -> its rows there
        whole: dict[str, int] = {}
        for table, path, rows, file_rows, key in entries:
            if table not in files:
                continue
            files[table][path] = None
            if file_rows is not None:  # a compacted file: which of its languages are current
                whole[path] = file_rows
                keys.setdefault(path, {})[key] = rows
        for table, paths in free.items():
            files[table].update(dict.fromkeys(paths))
        partial: dict[str, dict[str, list[tuple[str, ...]]]] = {}
        for table, paths in files.items():
            for path in paths:
                if path in whole and sum(keys[path].values()) != whole[path]:
                    partial.setdefault(table, {})[path] = sorted(keys[path])
        return cls({t: sorted(v) for t, v in files.items()}, partial)


Checked = tuple[str, "dict | None", list[str]]  # (marker path, its record or None, what is wrong with it)


def scan(lake: MarkerSource, workers: int = 16, checksums: bool = False) -> Scan:
    """Read and verify every marker (one listing, markers and Parquet footers read in parallel; with checksums
    every byte of every file against its recorded CRC-32), and every runs/benchmarks/attempts footer."""
    entries = lake.storage.list()
    reject_schema_1(entries, lake.uri)
    sizes = {e.path: e.size for e in entries}
    free = [e.path for e in entries if e.path.split("/", 1)[0] in FREE_TABLES and is_parquet(e.path)]
    results, unreadable_free = _check_all(lake, entries, sizes, free, workers, checksums)
    ok = {rel: record for rel, record, wrong in results if not wrong}
    named_by_ok = {f["path"] for r in ok.values() for f in r["files"]}
    problems, left_out = _broken(lake.storage, results, sizes, named_by_ok)
    complete, stale, excluded, more = visible(ok, done_marker)
    problems += stale
    left_out += more
    for rel, why in unreadable_free.items():
        if why:
            problems.append(Problem("broken", rel, why, (rel,)))
    named = named_by_ok | {f["path"] for _, r, _ in results if r for f in r.get("files", [])}
    state, catalog_unreadable = read_catalog(lake)
    problems += _leftovers(lake.storage, entries, named, set(state.superseded) if state else set(), problems)
    parsed = {rel: r for rel, r, _ in results if r is not None}
    free_ok = {t: [p for p in free if p.startswith(t + "/") and not unreadable_free[p]] for t in FREE_TABLES}
    return Scan(complete, problems, excluded, left_out, free_ok, parsed, state, catalog_unreadable)


def _check_all(
    lake: MarkerSource, entries: list[Entry], sizes: dict[str, int], free: list[str], workers: int, checksums: bool
) -> tuple[list[Checked], dict[str, str | None]]:
    """Every marker under _done/ read and verified, and why each free file is unreadable (None: it reads)."""
    marker_paths = [e.path for e in entries if e.path.startswith("_done/") and e.path.endswith(".json")]

    def load(rel: str) -> Checked:
        try:
            record = lake._read_marker(rel)
        except (OSError, ValueError) as e:
            return rel, None, [f"unreadable marker ({' '.join(str(e).split())[:160]})"]
        return rel, record, lake.verify(record, sizes, checksums)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, marker_paths))
        unreadable_free = dict(zip(free, pool.map(lambda rel: unreadable(lake.storage, rel), free)))
    return results, unreadable_free


def _broken(
    storage: Storage, results: list[Checked], sizes: dict[str, int], named_by_ok: set[str]
) -> tuple[list[Problem], list[tuple[str, str]]]:
    """A problem and a left-out line per marker that does not verify; repair deletes it with the files only it
    names, and a directory lying where one of them belongs (else the rerun could not write the file there)."""
    problems, left_out = [], []
    for rel, record, wrong in results:
        if wrong:
            own = tuple(f["path"] for f in (record or {}).get("files", []) if f["path"] not in named_by_ok)
            own = tuple(p for p in own if p in sizes or _clearable_directory(storage, p, named_by_ok))
            kind = "legacy" if record is not None and "files" not in record else "broken"
            problems.append(Problem(kind, rel, "; ".join(wrong), (rel, *own)))
            left_out.append((LEFT_OUT_BROKEN, label_of(record, rel)))
    return problems, left_out


def _clearable_directory(storage: Storage, path: str, named_by_ok: set[str]) -> bool:
    """A directory lying where a marker's Parquet file belongs, that repair may delete with what it holds: only a
    data file's own path in the lake's layout (a marker is not trusted to name one: "../x" or a whole partition
    must never go), holding nothing a verified marker names."""
    parts = path.split("/")
    if posixpath.normpath(path) != path or path.startswith("/") or "" in parts or ".." in parts:
        return False
    if parts[0] not in TABLES_WITH_MARKERS or not is_parquet(path) or not any(p.startswith("lang=") for p in parts):
        return False
    if any(named.startswith(path + "/") for named in named_by_ok):
        return False
    return storage.is_directory(path)


def _leftovers(
    storage: Storage, entries: list[Entry], named: set[str], superseded: set[str], problems: list[Problem]
) -> list[Problem]:
    """Stale leases (added to problems first), temporary files of interrupted writes, and orphans: Parquet files
    no verified marker names, outside (model, checkpoint)s a live run is writing, and not superseded by a compaction
    (those are deleted once no reader can be using them)."""
    live = {posixpath.dirname(lease) for lease in live_leases(storage, entries, problems)}
    found = []
    for e in entries:
        head = e.path.split("/", 1)[0]
        if is_temporary(e.path) or head == "_probe":
            if head == "_catalog" and not stale_temporary(e):
                continue  # any writer may be committing right now: only an old one is left over
            if "_leases/" + "/".join(e.path.split("/")[1:3]) not in live:  # else a live run is writing it
                found.append(Problem("temporary", e.path, "left by an interrupted write", (e.path,)))
        elif head in TABLES_WITH_MARKERS and is_parquet(e.path) and e.path not in named:
            key = "_leases/" + "/".join(e.path.split("/")[1:3])
            if key not in live and e.path not in superseded:
                found.append(Problem("orphaned", e.path, "no completion marker names it", (e.path,)))
    return found


def unreadable(storage: Storage, rel: str) -> str | None:
    """Why a runs/benchmarks/attempts file cannot be read as Parquet, or None."""
    try:
        with storage.open_input_file(rel) as src:
            pq.read_metadata(src)
        return None
    except (OSError, pa.ArrowException) as e:
        return f"not readable Parquet ({' '.join(str(e).split())[:120]})"


def read_catalog(lake: MarkerSource) -> tuple[CatalogState | None, UnreadableCatalog | None]:
    """(the catalogue as read now, None), or (None, the file that does not read); (None, None) when there is none
    yet. Either None state: every marker is read."""
    try:
        return Catalog(lake.storage).load(), None
    except UnreadableCatalog as e:
        return None, e


def catalog_state(lake: MarkerSource) -> CatalogState | None:
    """The catalogue as read now, or None (none yet, or unreadable, said in a warning: then every marker is read)."""
    state, unreadable = read_catalog(lake)
    if unreadable is not None:
        log.warning("lake %s: the catalogue is unreadable (%s); reading every marker", lake.uri, unreadable)
    return state


def live_leases(storage: Storage, entries: list[Entry], problems: list[Problem]) -> list[str]:
    """The live leases listed; a stale or unreadable one is added to problems."""
    live = []
    for e in entries:
        if not (e.path.startswith("_leases/") and e.path.endswith(".json")):
            continue
        try:
            record, age = read_lease(storage, e.path)
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(Problem("stale-lease", e.path, "unreadable lease", (e.path,)))
            continue
        if not lease_alive(record, age, LEASE_TIMEOUT_S):
            detail = f"run {record.get('run_id')} on {record.get('host')}: no heartbeat for {age:.0f}s"
            problems.append(Problem("stale-lease", e.path, detail, (e.path,)))
        else:
            live.append(e.path)
    return live


def catalogued(
    lake: MarkerSource,
    state: CatalogState,
    listed: dict[str, int] | None = None,
    sizes: dict[str, int] | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """(complete records, left-out lines) from the catalogue, each file checked against one listing's sizes; a
    listed marker that does not read as one is left out as broken, as the scan leaves it out (in path order, so
    the line is the scan's). listed: marker path -> bytes under _done/ (default: listed now), sizes: every table
    file -> bytes (same)."""
    markers = _listed_markers(lake, state, listed)
    if sizes is None:
        sizes = {p: n for t in TABLES_WITH_MARKERS for p, n in lake.storage.sizes(t).items()}
    ok, left_out = {}, []
    for rel in sorted(markers):
        record = markers[rel]
        before = state.markers.get(rel)
        if record is not before and _relaid(before, record) and _verifies(before, sizes):
            record = before  # a compaction between its marker rewrites and its catalogue entry: the entry switches
        if record is not None and _verifies(record, sizes):
            ok[rel] = record
        else:
            left_out.append((LEFT_OUT_BROKEN, label_of(record, rel)))
    complete, _, _, more = visible(ok, done_marker)
    return complete, left_out + more


def _relaid(before: dict | None, after: dict | None) -> bool:
    """Whether marker `after` is `before` rewritten by a compaction: the same result, only its rows moved into the
    checkpoint's compacted files (a new `compacted_at`, other files). Its catalogue entry switches every language
    of the checkpoint at once, so until then readers keep the catalogue's record (its files stay until VACUUM_S
    after the switch); a marker rewritten by a run (a new result) is read at once, as before."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return False
    if after.get("compacted_at") in (None, before.get("compacted_at")):
        return False
    same = ("files", "compacted_at")
    return {k: v for k, v in before.items() if k not in same} == {k: v for k, v in after.items() if k not in same}


def _verifies(record: dict, sizes: dict[str, int]) -> bool:
    """Whether every file the record names is listed at its recorded size."""
    files = record.get("files")
    return isinstance(files, list) and all(
        isinstance(f, dict) and sizes.get(f.get("path")) == f.get("bytes") for f in files
    )


def listed_markers(lake: MarkerSource) -> dict[str, int]:
    """Marker path -> bytes of every marker under _done/ (one listing)."""
    return {p: n for p, n in lake.storage.sizes("_done").items() if p.endswith(".json")}


def _listed_markers(lake: MarkerSource, state: CatalogState, listed: dict[str, int] | None) -> dict[str, dict | None]:
    """The catalogue's records of the markers one listing of _done/ shows: a marker the catalogue lacks or
    holds at another size (a writer died between the two, a marker rewritten) is read, None when it does not
    read as a valid marker (empty, cut short, not a marker); one deleted is gone."""
    listed = listed_markers(lake) if listed is None else listed
    out: dict[str, dict | None] = {}
    unread = []
    for path, size in listed.items():
        record = state.markers.get(path)
        if record is not None and state.sizes.get(path, -1) == size:
            out[path] = record
        else:
            unread.append(Entry(path, size))
    if unread:
        found = lake.marker_index(listed=unread)[0]
        for e in unread:  # one that did not read and is gone now was deleted since the listing: not broken
            if e.path in found or lake.storage.info(e.path) is not None:
                out[e.path] = found.get(e.path)
    return out
