"""Compaction: a complete checkpoint's small per-language files merged into one file per table, atomically.

    {lake}/matches/model={m}/checkpoint={c}/compacted-{id}.parquet         every (pivot_lang, lang) of the checkpoint
    {lake}/neuron_counts/model={m}/checkpoint={c}/compacted-{id}.parquet   every lang

Only the small tables are compacted (matches, neuron_counts, perplexity: a few kB per language); sentence_states
and similarity files are large already and stay per language (compute_pairs and read_states read them by path).
Rows are sorted by (pivot_lang, lang, method, layer, ...), so a query about one language reads a few row groups.
With the merged matches, what every score view reads is derived and stored beside them (layer_hits,
sentence_hits, alignment_interval at its defaults: the views evaluated over the merged rows alone, named after the
matches file), so the views read layers (or sentences) rows per pair and method instead of layers x sentences and
resample nothing again. A checkpoint compacted before these existed is compacted again to add them.

    {lake}/layer_hits/model={m}/checkpoint={c}/compacted-{id}.parquet      (the id of its matches file)
    {lake}/sentence_hits/model={m}/checkpoint={c}/compacted-{id}.parquet
    {lake}/alignment_interval/model={m}/checkpoint={c}/compacted-{id}.parquet

Steps, each leaving a lake whose views give the same answers:
 1. write the compacted files (new names; nothing names them yet: a crash leaves orphans `lake check` removes);
 2. rewrite each language's marker to name the compacted file (its rows there, the file's rows, the file's
    CRC-32) instead of its own file (a crash here: some markers name the compacted file, some their own, both
    verify; the catalogue still names the old files, which are all still there);
 3. one catalogue entry switches every language of the checkpoint at once and lists the old files as superseded
    (readers see the old files or the new ones, never a mix: a marker rewritten in step 2 is not read while the
    catalogue's record of it still verifies, scan._relaid);
 4. superseded files are deleted once older than VACUUM_S (a query started before step 3 can still read them) by
    a later compaction or `lake check --repair`.
A language recomputed after compaction gets its own file again; views then read the compacted file without it
(ViewFiles.partial) until the next compaction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neuronxa_ray.errors import NeuronxaError, no_such
from neuronxa_ray.lake.catalog import Catalog, CatalogState, UnreadableCatalog
from neuronxa_ray.lake.layout import lease_dir, partition
from neuronxa_ray.lake.leases import lease_alive, read_lease
from neuronxa_ray.lake.markers import WrittenFile
from neuronxa_ray.lake.schema import DERIVED_TABLES, PAIR_TABLES, TABLES_WITH_MARKERS, table_schema
from neuronxa_ray.lake.storage import Storage
from neuronxa_ray.lake.store import Lake
from neuronxa_ray.lake.vacuum import VACUUM_S, vacuum
from neuronxa_ray.lake.visibility import visible

log = logging.getLogger(__name__)

COMPACTED_TABLES = ("matches", "neuron_counts", "perplexity")
SORT = {
    "matches": ["pivot_lang", "lang", "method", "layer", "sentence"],
    "layer_hits": ["pivot_lang", "lang", "method", "layer"],
    "sentence_hits": ["pivot_lang", "lang", "method", "sentence"],
    "alignment_interval": ["pivot_lang", "lang", "method"],
    "neuron_counts": ["lang", "layer", "neuron"],
    "perplexity": ["lang", "sentence"],
}


@dataclass
class Compaction:
    """What one call did: checkpoints compacted (files before -> after), skipped (and why), files vacuumed."""

    compacted: dict[str, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    vacuumed: list[str] = field(default_factory=list)


def compact(
    lake: Lake | str,
    model: str | None = None,
    checkpoint: str | None = None,
    vacuum_after_s: float = VACUUM_S,
    crash_after: str | None = None,
    keys: list[tuple[str, str]] | None = None,
    fold: bool = True,
    derived: Derived | None = None,
) -> Compaction:
    """Compact every complete checkpoint (or those of model / checkpoint, or the (model, checkpoint) keys).
    derived: what to store beside the merged matches (query.derived_tables(), as `lake compact` and `run` pass it;
    None: nothing, and stored rows missing or of another version are no reason to compact).
    The catalogue is read once for all of them (and once more to vacuum), so compacting one checkpoint costs one
    reading of the catalogue, not one per checkpoint. fold: write a snapshot afterwards (`lake compact`); else
    the log is folded as writers fold it. crash_after: a step name ("files", "markers", "catalogue") after which to
    raise, for the tests of crash safety."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    catalog = Catalog(lake.storage)
    out = Compaction()
    try:
        state = catalog.load()
    except UnreadableCatalog as e:  # its superseded files and folded entries are unknown: nothing safe to switch
        raise NeuronxaError(
            f"lake {lake.uri}: the catalogue is unreadable ({e}); run `neuronxa-ray lake check --repair` first"
        ) from e
    if keys is not None:
        keys = sorted(set(keys))
    elif model is not None and checkpoint is not None and lake.storage.list(partition("_done", model, checkpoint)):
        keys = [(model, checkpoint)]  # its markers are there (in the catalogue or not yet: reconciled on the way)
    else:  # the checkpoints the catalogue knows (else every marker's)
        records = state.markers.values() if state is not None else lake.markers().values()
        held = {(r["model"], r["checkpoint"]) for r in records}
        try:
            _check_names(lake, held, model, checkpoint)
        except NeuronxaError:
            if state is None:
                raise
            held = {(r["model"], r["checkpoint"]) for r in lake.markers().values()}  # not yet in the catalogue?
            _check_names(lake, held, model, checkpoint)
        keys = sorted(
            (m, c) for m, c in held if (model is None or m == model) and (checkpoint is None or c == checkpoint)
        )
    for key in keys:
        label = f"{key[0]} @ {key[1]}"
        why = _compact_checkpoint(lake, catalog, state or CatalogState(), *key, crash_after, derived)
        if isinstance(why, str):
            out.skipped[label] = why
        else:
            out.compacted[label] = why
    state = catalog.load()
    out.vacuumed = sorted(set(state.superseded if state else {}) - set(vacuum(lake.storage, state, vacuum_after_s)))
    if state is not None and fold:
        catalog.fold(state)  # entries written since it was read stay in the log, unfolded
    return out


def _check_names(lake: Lake, held: set[tuple[str, str]], model: str | None, checkpoint: str | None) -> None:
    """A model or checkpoint asked for that the lake does not hold is a mistake (a typo would compact nothing and
    say so only as "0 checkpoint(s) compacted"); the closest name is suggested."""
    for name, value, values in (
        ("model", model, {m for m, _ in held}),
        ("checkpoint", checkpoint, {c for m, c in held if model is None or m == model}),
    ):
        if value is not None and value not in values:
            raise no_such(name, value, values, where=f"lake {lake.uri}: ")


def compact_after_run(
    lake: Lake | str, keys: list[tuple[str, str]], derived: Derived | None = None
) -> Compaction | None:
    """Compact the (model, checkpoint)s a run completed, as `lake compact` would, and fold the catalogue into a
    snapshot (so that the next reader opens the lake from one file); never fails the run: a failure is one warning
    (the lake stays as the run left it, and `lake compact` can do it later)."""
    if not keys:
        return None
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    try:
        done = compact(lake, keys=keys, derived=derived)
    except Exception as e:  # compaction is an optimisation: the run's results are in the lake already
        log.warning("lake %s: not compacted after the run (%s); `neuronxa-ray lake compact` can do it later",
                    lake.uri, " ".join(str(e).split())[:200])  # fmt: skip
        return None
    for label, why in done.skipped.items():
        if why != "nothing to compact":
            log.info("lake %s: %s not compacted: %s", lake.uri, label, why)
    return done


def _compact_checkpoint(
    lake: Lake,
    catalog: Catalog,
    state: CatalogState,
    model: str,
    checkpoint: str,
    crash_after: str | None,
    derived: Derived | None = None,
) -> tuple[int, int] | str:
    """Compact one checkpoint: (files before, files after), or why it was skipped. state: the catalogue as read
    before (its records of this checkpoint: files an interrupted compaction left named)."""
    storage = lake.storage
    writer = _writing_run(storage, model, checkpoint)
    if writer is not None:
        return f"run {writer} is writing it"
    prefix = partition("_done", model, checkpoint) + "/"
    named_before = {f["path"] for rel, r in state.markers.items() if rel.startswith(prefix) for f in r["files"]}
    lake.reconcile(model, checkpoint, state)
    markers = lake.markers(prefix)
    sizes = {e.path: e.size for t in TABLES_WITH_MARKERS for e in storage.list(partition(t, model, checkpoint))}
    wrong = {rel: lake.verify(r, sizes) for rel, r in markers.items()}
    if any(wrong.values()) or len(markers) < len(list(storage.list(prefix))):
        return "some of its markers do not verify (`neuronxa-ray lake check`)"
    complete, stale, _, left_out = visible(markers, lake.done_marker)
    if stale or left_out:
        return "some of its languages are stale or incomplete (`neuronxa-ray lake check`)"
    version = derived.version if derived is not None else None
    # a language without current stored rows (never compacted, recomputed since, compacted before they existed or
    # by other view definitions)
    hitless = derived is not None and any(
        "matches" in named and not named >= set(DERIVED_TABLES)
        for named in (
            {f["table"] for f in r["files"] if f["table"] not in DERIVED_TABLES or version in f["path"]}
            for r in complete
        )
    )
    tables = [
        t
        for t in COMPACTED_TABLES
        if (t == "matches" and hitless) or len({f["path"] for r in complete for f in r["files"] if f["table"] == t}) > 1
    ]
    if not tables:
        return "nothing to compact"
    new_files: dict[str, WrittenFile] = {}
    unit_rows: dict[tuple[str, str], int] = {}  # (table, marker path) -> its rows in the compacted file
    for table in tables:
        merged = _merge(storage, table, markers, unit_rows)
        name = f"/compacted-{uuid.uuid4().hex[:12]}.parquet"
        written = lake.write(table, merged, partition(table, model, checkpoint) + name)
        new_files[table] = dataclasses.replace(written, file_rows=written.rows)
        if table == "matches" and derived is not None:  # its hits, under the same name and the views' version
            for kind, rows in derive_hits(derived, merged).items():
                path = derived.path(partition(table, model, checkpoint) + name, kind, version)
                written = lake.write(kind, rows, path)
                new_files[kind] = dataclasses.replace(written, file_rows=written.rows)
                per_key = _rows_per_pair(rows)
                for rel, record in markers.items():
                    if (table, rel) in unit_rows:
                        unit_rows[(kind, rel)] = per_key.get((record["pivot_lang"], record["lang"]), 0)
    if crash_after == "files":
        raise RuntimeError("crash after the compacted files")
    # markers are about to be rewritten: a run that took the lease while the files were merged and derived keeps
    # its own (the new files are orphans, tidied like an interrupted compaction's)
    if writer_now := _writing_run(storage, model, checkpoint):
        return f"run {writer_now} started writing it"
    now = time.time()
    changes, superseded = _switched(markers, new_files, unit_rows, now)
    marker_sizes = _write_markers(storage, changes, crash_after)
    still = {f["path"] for r in changes.values() for f in r["files"]} | {
        f["path"] for rel, r in markers.items() if rel not in changes for f in r["files"]
    }
    superseded.update({p: now for p in named_before if p in sizes})
    named_now = {f["path"] for r in markers.values() for f in r["files"]}
    leftover = [p for p in sizes if posixpath.basename(p).startswith("compacted-") and p not in named_now]
    superseded.update({p: now for p in leftover if p not in state.superseded})  # an interrupted compaction's
    superseded = {p: t for p, t in superseded.items() if p not in still}
    catalog.commit(changes, lake.marker_index, superseded, marker_sizes)  # the switch: one entry
    if crash_after == "catalogue":
        raise RuntimeError("crash after the catalogue entry")
    before = len({f["path"] for r in markers.values() for f in r["files"] if f["table"] in new_files})
    log.info("lake %s: %s @ %s compacted: %d files -> %d", lake.uri, model, checkpoint, before, len(new_files))
    return before, len(new_files)


def _writing_run(storage: Storage, model: str, checkpoint: str) -> str | None:
    """The run id of a live run writing the checkpoint (unreadable leases ignored), or None."""
    for e in storage.list(lease_dir(model, checkpoint)):
        try:
            record, age = read_lease(storage, e.path)
            if lease_alive(record, age, float(record.get("timeout_s", 900))):
                return str(record.get("run_id"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _merge(storage: Storage, table: str, markers: dict[str, dict], unit_rows: dict[tuple[str, str], int]) -> pa.Table:
    """Every language's rows of one table, once each, sorted; unit_rows gets each marker's rows in it."""
    parts, read, taken = [], {}, {}
    for rel, record in markers.items():
        for f in record["files"]:
            if f["table"] != table:
                continue
            key = (record["pivot_lang"], record["lang"]) if table in PAIR_TABLES else (record["lang"],)
            if key in taken:  # one language's neuron_counts named by the markers of two pivots: once
                unit_rows[(table, rel)] = taken[key]
                continue
            if f["path"] not in read:
                schema = table_schema(table)
                read[f["path"]] = pq.read_table(storage.path(f["path"]), filesystem=storage.fs, schema=schema)
            part = read[f["path"]]
            if f.get("file_rows") is not None:  # from an earlier compaction: this language's rows only
                mask = pc.equal(part["lang"], record["lang"])
                if table in PAIR_TABLES:
                    mask = pc.and_(mask, pc.equal(part["pivot_lang"], record["pivot_lang"]))
                part = part.filter(mask)
            if part.num_rows != f["rows"]:
                raise RuntimeError(f"{f['path']}: {part.num_rows} rows of {record['lang']}, its marker {f['rows']}")
            unit_rows[(table, rel)] = taken[key] = part.num_rows
            parts.append(part)
    return pa.concat_tables(parts).sort_by([(c, "ascending") for c in SORT[table]])


@dataclass(frozen=True)
class Derived:
    """What compaction stores beside a checkpoint's merged matches, given from above (query.derived_tables: the
    views evaluated over those rows alone): version names what computed them (stored rows of another version are
    not read and are replaced), rows(matches) -> table -> rows, path(matches file, table, version) -> its file."""

    version: str
    rows: Callable[[pa.Table], dict[str, pa.Table]]
    path: Callable[[str, str, str], str]


def derive_hits(derived: Derived, matches: pa.Table) -> dict[str, pa.Table]:
    """The derived tables of a checkpoint's matches rows, sorted."""
    out = derived.rows(matches)
    return {t: out[t].sort_by([(c, "ascending") for c in SORT[t]]) for t in DERIVED_TABLES}


def _rows_per_pair(rows: pa.Table) -> dict[tuple[str, str], int]:
    """(pivot_lang, lang) -> its rows."""
    counts = rows.group_by(["pivot_lang", "lang"]).aggregate([("lang", "count")])
    keys = zip(counts["pivot_lang"].to_pylist(), counts["lang"].to_pylist())
    return dict(zip(keys, counts["lang_count"].to_pylist()))


def _switched(
    markers: dict[str, dict], new_files: dict[str, WrittenFile], unit_rows: dict[tuple[str, str], int], now: float
) -> tuple[dict[str, dict], dict[str, float]]:
    """(marker path -> its record naming the compacted files, file -> when it was superseded). A marker naming
    the new matches file names its hits files too."""
    changes: dict[str, dict] = {}
    superseded: dict[str, float] = {}
    for rel, record in markers.items():
        files = []
        for f in record["files"]:
            if f["table"] in new_files and f["table"] not in DERIVED_TABLES:
                superseded[f["path"]] = now
                new = new_files[f["table"]]
                files.append(dataclasses.replace(new, rows=unit_rows[(f["table"], rel)]).record())
            elif f["table"] in DERIVED_TABLES and ("matches", rel) in unit_rows:
                superseded[f["path"]] = now  # hits of an earlier compaction: replaced below
            else:
                files.append(f)
        if ("matches", rel) in unit_rows:
            for table in DERIVED_TABLES:
                if table in new_files:
                    files.append(dataclasses.replace(new_files[table], rows=unit_rows[(table, rel)]).record())
        if files != record["files"]:
            changes[rel] = {**record, "files": files, "compacted_at": now}
    return changes, superseded


def _write_markers(storage: Storage, changes: dict[str, dict], crash_after: str | None) -> dict[str, int]:
    """Rewrite the changed markers; returns marker path -> its bytes."""
    sizes = {}
    for i, (rel, record) in enumerate(changes.items()):
        data = json.dumps(record).encode()
        storage.write_bytes(rel, data)
        sizes[rel] = len(data)
        if crash_after == "markers" and i == len(changes) // 2:
            raise RuntimeError("crash halfway through the markers")
    return sizes
