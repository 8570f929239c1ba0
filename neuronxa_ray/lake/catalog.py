"""The lake's catalogue: which completion markers are committed, read in a few files instead of one per language.

    {lake}/_catalog/log/{time_ns}-{id}.json          one per commit: {"markers": {marker path: record | null}, ...}
    {lake}/_catalog/snapshot-{time_ns}-{id}.parquet  the whole state folded from the log (one row per marker)

A commit is one log entry, written whole or not at all (storage.py), so a change that spans many markers (a
compaction) is seen whole by every reader. Reading: the newest snapshot, then the log entries it has not folded
(its metadata lists the ones it has), in name order; a later record of a marker replaces an earlier one, null
removes it. Writers fold the log into a new snapshot now and then; folded entries and old snapshots are deleted
only once older than RETAIN_S, so a reader or a slow folder never misses a commit (a reader that finds a file
gone lists again). Entry names order by the writer's clock: hosts that share a lake keep their clocks in step.

The markers under _done/ stay the source of truth: `lake check` compares the catalogue with them and `--repair`
rebuilds it from them. The catalogue holds marker records as written; verification and the consistency rules
(pivot agreement, precision, pair sources) are applied by the reader (scan.py), the same as over the markers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from neuronxa_ray.lake.layout import is_parquet, is_temporary
from neuronxa_ray.lake.schema import FREE_TABLES
from neuronxa_ray.lake.storage import Entry, Storage
from neuronxa_ray.lake.visibility import LEFT_OUT_BROKEN, label_of, visible

log = logging.getLogger(__name__)

ROOT = "_catalog"
LOG_DIR = f"{ROOT}/log"
RETAIN_S = 600.0  # folded log entries and superseded snapshots are kept this long (longer than any fold takes)
FOLD_EVERY = 256  # a writer folds the log into a snapshot when this many entries are newer than the snapshot
KEY = b"neuronxa_ray.catalog"
LIST_EVERY = 32  # a writer lists the catalogue (to bootstrap or fold it) on its first commit and every 32nd
_commits: dict[str, int] = {}  # lake URI -> this process's commits since it last listed the catalogue

_FILE = pa.struct(
    [
        pa.field("table", pa.string()),
        pa.field("path", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("file_rows", pa.int64()),
        pa.field("crc32", pa.int64()),
    ]
)
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("marker", pa.string(), False),  # the marker's path under _done/
        pa.field("model", pa.string()),
        pa.field("checkpoint", pa.string()),
        pa.field("pivot_lang", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("fingerprint", pa.string()),
        pa.field("checkpoint_fingerprint", pa.string()),
        pa.field("marker_bytes", pa.int64()),
        pa.field("files", pa.list_(_FILE)),  # what the language's views read (paths relative to the lake)
        pa.field("record", pa.string(), False),  # the marker as JSON, every field
        # what the views make of the marker when every file of its checkpoint is as recorded (opening.py):
        pa.field("visible", pa.bool_()),  # counted by the views
        pa.field("left_out", pa.string()),  # else why it is left out (visibility.LEFT_OUT_*)
        pa.field("left_out_label", pa.string()),  # and the label of its line
    ]
)
SNAPSHOT_ROW_GROUP = 4096  # rows are sorted by marker path: a reader wanting one checkpoint's records reads a group


class UnreadableCatalog(ValueError):
    """A catalogue file that is listed but does not read (empty, cut short, not a snapshot or an entry): which one
    and why. Readers then read every marker; `lake check` names it, `--repair` rebuilds the catalogue and then
    deletes it (drop_unreadable)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


@contextlib.contextmanager
def _reading(rel: str):
    """Errors reading one catalogue file raised as UnreadableCatalog naming it; FileNotFoundError passes (a folder
    removed the file since the listing: the reader lists again)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, pa.ArrowException) as e:  # TypeError: a value of the wrong type
        raise UnreadableCatalog(rel, " ".join(str(e).split())[:200]) from e


@dataclass
class CatalogState:
    """Marker path -> record, files superseded by compaction (path -> when, deleted later), and what it folded."""

    markers: dict[str, dict] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # marker path -> its bytes (a rewritten marker differs)
    superseded: dict[str, float] = field(default_factory=dict)
    folded: set[str] = field(default_factory=set)  # log entry names the state includes
    snapshot: str | None = None
    free: dict[str, int] = field(default_factory=dict)  # runs/benchmarks/attempts files whose footer read: bytes

    def apply(self, name: str, entry: dict) -> None:
        check_entry(name, entry)
        for rel, record in (entry.get("markers") or {}).items():
            if record is None:
                self.markers.pop(rel, None)
                self.sizes.pop(rel, None)
            elif rel not in self.markers or _version(record) >= _version(self.markers[rel]):
                self.markers[rel] = record  # an entry written late with an older record does not win
                size = (entry.get("sizes") or {}).get(rel)
                if isinstance(size, int):
                    self.sizes[rel] = size
                else:
                    self.sizes.pop(rel, None)
        for path, when in (entry.get("superseded") or {}).items():
            self.superseded[path] = float(when)
        for path in entry.get("vacuumed") or ():
            self.superseded.pop(path, None)
        self.folded.add(name)


def _version(record: dict) -> tuple[float, float]:
    """Which of two records of one marker is newer: when it was written, then when it was compacted."""
    try:
        return float(record.get("written_at") or 0.0), float(record.get("compacted_at") or 0.0)
    except (TypeError, ValueError):
        return 0.0, 0.0


def _entry_time(name: str) -> float:
    """Seconds since the epoch from an entry's or snapshot's name (time_ns first); 0 when it has none."""
    stem = posixpath.basename(name).removeprefix("snapshot-")
    try:
        return int(stem.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0


def _name() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


class Catalog:
    """The catalogue of one lake root (see the module docstring)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- writing -------------------------------------------------------------------------------------------------
    def append(
        self,
        markers: dict[str, dict | None] | None = None,
        superseded: dict[str, float] | None = None,
        vacuumed: list[str] | None = None,
        sizes: dict[str, int] | None = None,
    ) -> str:
        """One commit: marker records (None: removed) and their sizes, files superseded by a compaction, files
        vacuumed."""
        entry: dict = {"markers": markers or {}, "sizes": sizes or {}}
        if superseded:
            entry["superseded"] = superseded
        if vacuumed:
            entry["vacuumed"] = vacuumed
        rel = f"{LOG_DIR}/{_name()}.json"
        self.storage.write_bytes(rel, json.dumps(entry).encode())
        return rel

    def commit(
        self,
        markers: dict[str, dict | None],
        all_markers,
        superseded: dict[str, float] | None = None,
        sizes: dict[str, int] | None = None,
    ) -> None:
        """Append marker records (after the markers are written); fold when the log has grown. A lake without a
        catalogue yet (new, or written by an older version) first gets every marker it holds: all_markers() ->
        ({path: record}, {path: bytes}), read after this listing, so a concurrent commit is in this entry or its
        own. sizes: marker path -> bytes as written."""
        since = _commits.get(self.storage.uri)
        if since is not None and since < LIST_EVERY:  # this process saw the catalogue lately: no listing
            self.append(markers, superseded, sizes=sizes)
            _commits[self.storage.uri] = since + 1
            return
        entries = self.storage.list(ROOT)
        if not any(is_snapshot(e.path) or is_entry(e.path) for e in entries):
            found, found_sizes = all_markers()
            markers, sizes = {**found, **markers}, {**found_sizes, **(sizes or {})}
        self.append(markers, superseded, sizes=sizes)
        _commits[self.storage.uri] = 0
        self.maybe_fold(entries)

    def maybe_fold(self, entries=None) -> None:
        """Fold when FOLD_EVERY entries are newer than the newest snapshot (from one listing; names carry times)."""
        entries = self.storage.list(ROOT) if entries is None else entries
        snaps = [e.path for e in entries if is_snapshot(e.path)]
        newest = _entry_time(max(snaps)) if snaps else 0.0
        pending = sum(1 for e in entries if is_entry(e.path) and _entry_time(e.path) >= newest)
        if pending >= FOLD_EVERY:
            try:
                self.fold()
            except (OSError, pa.ArrowException, ValueError) as e:  # another folder removed what it read: later
                log.info("lake %s: catalogue not folded this time (%s)", self.storage.uri, e)

    def fold(self, state: CatalogState | None = None) -> str:
        """Write the state (default: as read now) as the newest snapshot; delete what is older than RETAIN_S."""
        state = self.load() if state is None else state
        if state is None:
            state = CatalogState()
        state.free = self.readable_free(state.free)
        rel = self.write_snapshot(state)
        self.clean(rel)
        return rel

    def readable_free(self, known: dict[str, int]) -> dict[str, int]:
        """runs/benchmarks/attempts files whose Parquet footer reads (path -> bytes): those known at their size,
        the footers of the others read now, so that opening the lake reads only the footers of newer files."""
        out = {}
        for table in FREE_TABLES:
            for path, size in self.storage.sizes(table).items():
                if not is_parquet(path):
                    continue
                if known.get(path) == size or _footer_reads(self.storage, path):
                    out[path] = size
        return out

    def write_snapshot(self, state: CatalogState) -> str:
        rows = sorted(state.markers.items())
        why: dict[str, tuple[str, str]] = {}
        ok = {rel: r for rel, r in rows if isinstance(r.get("files"), list)}
        for rel, r in rows:
            if rel not in ok:
                why[rel] = (LEFT_OUT_BROKEN, label_of(r, rel))
        try:
            shown: set[int] | None = {id(r) for r in visible(ok, why=why)[0]}
        except (KeyError, TypeError, AttributeError, ValueError):  # a record the rules cannot read: no verdicts
            shown, why = None, {}  # (opening then reads every checkpoint as before)
        columns = {
            "marker": [rel for rel, _ in rows],
            "marker_bytes": [state.sizes.get(rel) for rel, _ in rows],
            **{k: [r.get(k) for _, r in rows] for k in ("model", "checkpoint", "pivot_lang", "lang", "fingerprint")},
            "checkpoint_fingerprint": [r.get("checkpoint_fingerprint") for _, r in rows],
            "files": [[{k: f.get(k) for k in _FILE.names} for f in r.get("files") or []] for _, r in rows],
            "record": [json.dumps(r) for _, r in rows],
            "visible": [None if shown is None else id(r) in shown for _, r in rows],
            "left_out": [why[rel][0] if rel in why else None for rel, _ in rows],
            "left_out_label": [why[rel][1] if rel in why else None for rel, _ in rows],
        }
        meta = {"folded": sorted(state.folded), "superseded": state.superseded, "free": state.free}
        schema = SNAPSHOT_SCHEMA.with_metadata({KEY: json.dumps(meta).encode()})
        table = pa.table(columns, schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=SNAPSHOT_ROW_GROUP)
        rel = f"{ROOT}/snapshot-{_name()}.parquet"
        self.storage.write_bytes(rel, sink.getvalue())
        return rel

    def clean(self, newest: str) -> None:
        """Delete log entries the newest snapshot folded and snapshots other than the two newest, once older than
        RETAIN_S."""
        cutoff = time.time() - RETAIN_S
        entries = self.storage.list(ROOT)
        try:
            folded = _read_snapshot(self.storage, newest).folded
        except (OSError, pa.ArrowException, ValueError):
            return
        snaps = sorted(e.path for e in entries if is_snapshot(e.path))
        old = [p for p in snaps[:-2] if _entry_time(p) < cutoff and p != newest]
        done = [e.path for e in entries if is_entry(e.path) and entry_name(e.path) in folded]
        for rel in old + [p for p in done if _entry_time(p) < cutoff]:
            self.storage.delete(rel)

    def rebuild(self, all_markers, superseded: dict[str, float] | None = None) -> str:
        """A snapshot from the markers themselves (`lake check --repair`): it folds every entry listed before
        all_markers() reads them, so a commit made meanwhile is in the markers or stays in the log."""
        entries = self.storage.list(ROOT)
        found, sizes = all_markers()
        state = CatalogState(dict(found), dict(sizes), dict(superseded or {}))
        state.folded = {entry_name(e.path) for e in entries if is_entry(e.path)}
        return self.fold(state)

    # -- reading -------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return any(is_snapshot(e.path) or is_entry(e.path) for e in self.storage.list(ROOT))

    def load(self, workers: int = 16) -> CatalogState | None:
        """The catalogue's state, or None when the lake has none (written before catalogues, or empty)."""
        for attempt in range(5):
            try:
                return self._load(workers)
            except FileNotFoundError:  # a folder removed a file this listing named: list again
                time.sleep(0.05 * (attempt + 1))
        return self._load(workers)

    def _load(self, workers: int) -> CatalogState | None:
        entries = self.storage.sizes(ROOT)
        snaps = sorted(p for p in entries if is_snapshot(p))
        logs = sorted((p for p in entries if is_entry(p)), key=entry_name)
        if not snaps and not logs:
            return None
        state = CatalogState()
        if snaps:
            with _reading(snaps[-1]):
                state = _read_snapshot(self.storage, snaps[-1])
        pending = [p for p in logs if entry_name(p) not in state.folded]

        def read(rel: str) -> dict:
            with _reading(rel):
                return read_entry(self.storage, rel)

        with ThreadPoolExecutor(max_workers=min(workers, max(1, len(pending)))) as pool:
            for rel, entry in zip(pending, pool.map(read, pending)):
                with _reading(rel):
                    state.apply(entry_name(rel), entry)
        return state

    def drop_unreadable(self, rel: str) -> bool:
        """Delete a catalogue file that did not read, once rebuild() wrote the snapshot that supersedes it (`lake
        check --repair`): readers read the newest snapshot and the entries it has not folded, so none reads it again,
        and one that listed it before could not read it either. One that reads now (a passing I/O error) stays, for
        clean() to delete in its time. True when deleted."""
        try:
            if is_snapshot(rel):
                _read_snapshot(self.storage, rel)
            else:
                read_entry(self.storage, rel)
            return False
        except FileNotFoundError:
            return False
        except (OSError, ValueError, TypeError, pa.ArrowException):
            return self.storage.delete(rel)


def is_snapshot(path: str) -> bool:
    return path.startswith(f"{ROOT}/snapshot-") and path.endswith(".parquet")


def is_entry(path: str) -> bool:
    return path.startswith(f"{LOG_DIR}/") and path.endswith(".json") and not posixpath.basename(path).startswith(".")


def entry_name(path: str) -> str:
    return posixpath.basename(path).removesuffix(".json")


def read_entry(storage: Storage, rel: str) -> dict:
    """One log entry, its shape checked (ValueError otherwise)."""
    entry = json.loads(storage.read_bytes(rel))
    check_entry(rel, entry)
    return entry


def check_entry(name: str, entry: Any) -> None:
    """ValueError unless entry has a log entry's shape: an object whose markers map paths to records (objects) or
    None, whose sizes and superseded are objects and vacuumed a list."""
    if not isinstance(entry, dict):
        raise ValueError(f"catalogue entry {name} is not an object")
    for key, kind in (("markers", dict), ("sizes", dict), ("superseded", dict), ("vacuumed", list)):
        if not isinstance(entry.get(key) or kind(), kind):
            raise ValueError(f"catalogue entry {name}: {key!r} is not a{'n object' if kind is dict else ' list'}")
    for rel, record in (entry.get("markers") or {}).items():
        if record is not None and not isinstance(record, dict):
            raise ValueError(f"catalogue entry {name}: the record of {rel} is not an object")


def _read_snapshot(storage: Storage, rel: str) -> CatalogState:
    with storage.open_input_file(rel) as src:
        table = pq.read_table(src, columns=["marker", "marker_bytes", "record"])
    meta = json.loads((table.schema.metadata or {}).get(KEY, b"{}"))
    markers = dict(zip(table.column("marker").to_pylist(), map(json.loads, table.column("record").to_pylist())))
    sizes = {k: v for k, v in zip(table.column("marker").to_pylist(), table.column("marker_bytes").to_pylist()) if v}
    state = CatalogState(markers, sizes, {k: float(v) for k, v in meta.get("superseded", {}).items()})
    state.folded = set(meta.get("folded", []))
    state.snapshot = rel
    state.free = {k: int(v) for k, v in (meta.get("free") or {}).items()}
    return state


def _footer_reads(storage: Storage, rel: str) -> bool:
    try:
        with storage.open_input_file(rel) as src:
            pq.read_metadata(src)
        return True
    except (OSError, pa.ArrowException):
        return False


CATALOG_TEMPORARY_S = 30.0  # a catalogue write takes milliseconds: a temporary file this old was left by a kill


def stale_temporary(e: Entry) -> bool:
    """A temporary file of the catalogue old enough to have been left by a killed writer (any writer may be
    committing right now: only an old one is left over)."""
    return is_temporary(e.path) and time.time() - (e.mtime or 0.0) > CATALOG_TEMPORARY_S
