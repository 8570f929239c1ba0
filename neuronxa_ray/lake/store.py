"""The Parquet lake: explicit schemas, deterministic paths, atomic writes, completion markers, the runs table.

Layout (hive-style directories; every file also carries its model/checkpoint/lang columns, so a single file
read by pyarrow or polars is self-describing):
    {lake}/sentence_states/model={m}/checkpoint={c}/lang={l}/part-0.parquet
    {lake}/neuron_counts/model={m}/checkpoint={c}/lang={l}/part-0.parquet
    {lake}/matches/model={m}/checkpoint={c}/pivot_lang={p}/lang={l}/part-0.parquet
    {lake}/similarity/model={m}/checkpoint={c}/pivot_lang={p}/lang={l}/part-0.parquet   (optional: store_similarity)
    {lake}/runs/model={m}/checkpoint={c}/{run_id}.parquet
    {lake}/benchmarks/{name}.parquet            (downstream results imported by `neuronxa-ray import-benchmarks`)
    {lake}/attempts/run_id={r}/part-{n}.parquet
    {lake}/_done/model={m}/checkpoint={c}/pivot_lang={p}/lang={l}.json   (written last: names every file, size, rows)
    {lake}/_leases/model={m}/checkpoint={c}/{run_id}.json                 (a live run's claim, with its heartbeat)
    {lake}/_catalog/log/*.json, {lake}/_catalog/snapshot-*.parquet       (the committed markers: catalog.py)
    {lake}/{matches,neuron_counts}/model={m}/checkpoint={c}/compacted-{id}.parquet   (compaction.py)
The lake is a local directory or an object-store URI (storage.py). Local files are written under a temporary name
and renamed into place; object-store files once under their final name. A language counts only when its marker
verifies (files present with the recorded sizes and row counts; `lake check` also compares every byte with the
recorded CRC-32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake.catalog import Catalog, CatalogState
from neuronxa_ray.lake.storage import Entry, Storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"  # 2: the pivot column is pivot_lang (pivot is a DuckDB keyword)
METADATA_KEY = b"neuronxa_ray.schema_version"


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={METADATA_KEY: SCHEMA_VERSION, b"neuronxa_ray.table": name})


_KEYS = [pa.field("model", pa.string(), False), pa.field("checkpoint", pa.string(), False)]

SCHEMAS: dict[str, pa.Schema] = {
    "sentence_states": _schema(
        "sentence_states",
        [
            *_KEYS,
            pa.field("lang", pa.string(), False),
            pa.field("sentence", pa.int32(), False),  # 0-based position in the parallel corpus
            pa.field("sentence_id", pa.string(), False),  # the corpus's own id of the unit
            pa.field("method", pa.string(), False),  # nas | nav | hidden | hidden_last
            pa.field("layer", pa.int16(), False),
            pa.field("n_tokens", pa.int32(), False),
            pa.field("state", pa.list_(pa.float32()), False),
        ],
    ),
    "neuron_counts": _schema(
        "neuron_counts",
        [
            *_KEYS,
            pa.field("lang", pa.string(), False),
            pa.field("layer", pa.int16(), False),
            pa.field("neuron", pa.int32(), False),
            pa.field("n_active", pa.int64(), False),  # tokens with activation > 0
            pa.field("abs_sum", pa.float64(), False),  # sum of |activation| over tokens
            pa.field("n_tokens", pa.int64(), False),  # tokens of this language seen
        ],
    ),
    "similarity": _schema(
        "similarity",
        [
            *_KEYS,
            pa.field("pivot_lang", pa.string(), False),
            pa.field("lang", pa.string(), False),
            pa.field("method", pa.string(), False),
            pa.field("layer", pa.int16(), False),
            pa.field("pivot_sentence", pa.int32(), False),  # row i of C
            pa.field("cosine", pa.list_(pa.float64()), False),  # C[i, j] for lang sentence j; NaN: zero state
        ],
    ),
    # One row per (method, layer, sentence i) of a pivot/language pair: what the scores need from C, O(n) per
    # layer (see scoring.py). NULL diagonal: a zero/NaN state; NULL rival: no non-NaN rival; NULL rank: NULL diagonal.
    "matches": _schema(
        "matches",
        [
            *_KEYS,
            pa.field("pivot_lang", pa.string(), False),
            pa.field("lang", pa.string(), False),
            pa.field("method", pa.string(), False),
            pa.field("layer", pa.int16(), False),
            pa.field("sentence", pa.int32(), False),  # i: pivot sentence i and its parallel lang sentence i
            pa.field("diagonal", pa.float64()),  # C[i, i]
            pa.field("row_rival", pa.float64()),  # max_{j != i} C[i, j]
            pa.field("column_rival", pa.float64()),  # max_{j != i} C[j, i]
            pa.field("row_hit", pa.bool_(), False),  # diagonal > row_rival (pivot -> lang retrieval)
            pa.field("column_hit", pa.bool_(), False),  # diagonal > column_rival (lang -> pivot retrieval)
            pa.field("row_rank", pa.int32()),  # 1 + #{j != i: C[i, j] >= C[i, i]}
            pa.field("column_rank", pa.int32()),  # 1 + #{j != i: C[j, i] >= C[i, i]}
        ],
    ),
    "runs": _schema(
        "runs",
        [
            pa.field("run_id", pa.string(), False),
            *_KEYS,
            pa.field("revision", pa.string()),
            pa.field("step", pa.int64()),
            pa.field("pivot_lang", pa.string(), False),
            pa.field("languages", pa.list_(pa.string()), False),
            pa.field("n_languages", pa.int32(), False),
            pa.field("n_languages_computed", pa.int32(), False),  # the rest were complete already
            pa.field("n_sentences", pa.int32(), False),
            pa.field("n_layers", pa.int32()),
            pa.field("d_ff", pa.int32()),
            pa.field("d_model", pa.int32()),
            pa.field("model_type", pa.string()),
            pa.field("hook_site", pa.string(), False),
            pa.field("device", pa.string()),
            pa.field("dtype", pa.string()),
            pa.field("num_actors", pa.int32()),
            pa.field("started_at", pa.timestamp("us", tz="UTC"), False),
            pa.field("finished_at", pa.timestamp("us", tz="UTC"), False),
            pa.field("wall_s", pa.float64(), False),
            pa.field("startup_s", pa.float64()),  # Ray start + model load, before the first sentence
            pa.field("extract_s", pa.float64()),  # summed over actors: forward passes + reductions
            pa.field("write_s", pa.float64()),  # summed over actors: Parquet writes
            pa.field("n_tokens", pa.int64()),
            pa.field("sentences_per_s", pa.float64()),
            pa.field("code_version", pa.string(), False),
            pa.field("schema_version", pa.string(), False),
            pa.field("torch_version", pa.string()),
            pa.field("transformers_version", pa.string()),
            pa.field("config_json", pa.string(), False),
        ],
    ),
    "attempts": _schema(
        "attempts",
        [
            pa.field("run_id", pa.string(), False),
            *_KEYS,
            pa.field("lang", pa.string(), False),
            pa.field("attempt", pa.int32(), False),  # 1 for the first try of the language in this run
            pa.field("node", pa.string()),
            pa.field("device", pa.string()),
            pa.field("started_at", pa.timestamp("us", tz="UTC")),  # the worker's: its extraction began
            pa.field("finished_at", pa.timestamp("us", tz="UTC")),  # the worker's: its write ended (else the driver's)
            pa.field("status", pa.string(), False),  # ok | failed | lost
            pa.field("error", pa.string()),
            pa.field("extracted_at", pa.timestamp("us", tz="UTC")),  # the worker's: its forward passes ended
        ],
    ),
    "benchmarks": _schema(
        "benchmarks",
        [
            pa.field("benchmark", pa.string(), False),
            pa.field("lang", pa.string(), False),
            pa.field("value", pa.float64(), False),
            pa.field("model", pa.string()),  # NULL: applies to every model
            pa.field("checkpoint", pa.string()),  # NULL: applies to every checkpoint
            pa.field("lang_canonical", pa.string()),  # neuronxa_ray.languages.canonical_lang(lang)
            pa.field("task", pa.string()),  # the source's own task name (lm-eval), else NULL
            pa.field("metric", pa.string()),  # the source's metric key, e.g. "acc,none", else NULL
        ],
    ),
}

# Per-table Parquet options. The float64 cosines compress 30% smaller split into byte streams (BSS needs the
# column's dictionary encoding off); DuckDB, polars and pyarrow read BSS for FLOAT and DOUBLE.
WRITE_OPTIONS: dict[str, dict] = {
    # States: no dictionary and no statistics for the list of floats (neither helps a reader; both cost the writer:
    # 2.6x faster writes, the same bytes, measured in benchmarks/bench_writes.py)
    "sentence_states": {
        "use_dictionary": ["model", "checkpoint", "lang", "method", "sentence_id"],
        "write_statistics": ["model", "checkpoint", "lang", "sentence", "method", "layer"],
    },
    "similarity": {
        "use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method"],
        "use_byte_stream_split": ["cosine.list.element"],
    },
    "matches": {
        "use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method", "layer"],
        "use_byte_stream_split": ["diagonal", "row_rival", "column_rival"],
    },
}

PAIR_TABLES = ("similarity", "matches")  # partitioned by pivot_lang as well as lang


def table_schema(table: str, state_dtype: str = "float32") -> pa.Schema:
    """The explicit schema of a table; sentence_states may store its states as float16 (half the bytes)."""
    schema = SCHEMAS[table]
    if table == "sentence_states" and state_dtype == "float16":
        i = schema.get_field_index("state")
        schema = schema.set(i, pa.field("state", pa.list_(pa.float16()), False))
    return schema


def slug(value: str) -> str:
    """A path-safe partition value; a short hash keeps distinct values distinct after replacement."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._") or "_"
    if safe != value:
        safe = f"{safe[:80]}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return safe


@dataclass(frozen=True)
class WrittenFile:
    """A file the lake wrote: its path relative to the lake root, its size in bytes, its row count and the CRC-32
    of its bytes (None: not recorded, e.g. by an older version). A compacted file holds many languages: rows are
    this language's, file_rows the whole file's."""

    path: str
    bytes: int
    rows: int
    table: str = ""
    crc32: int | None = None
    file_rows: int | None = None

    def record(self) -> dict:
        out = {
            "table": self.table or self.path.split("/", 1)[0],
            "path": self.path,
            "bytes": self.bytes,
            "rows": self.rows,
        }
        if self.crc32 is not None:
            out["crc32"] = self.crc32
        if self.file_rows is not None:
            out["file_rows"] = self.file_rows
        return out

    @classmethod
    def from_record(cls, f: dict) -> WrittenFile:
        """The inverse of record(): a marker's file entry, every recorded field kept."""
        return cls(f["path"], f["bytes"], f["rows"], f.get("table", ""), f.get("crc32"), f.get("file_rows"))


def crc32_of(data) -> int:
    """The CRC-32 of a bytes-like object (zlib's: fast, in the standard library)."""
    return zlib.crc32(data) & 0xFFFFFFFF


_MARKER_KEYS = ("fingerprint", "model", "checkpoint", "pivot_lang", "lang")
_FILE_KEYS = {"path": str, "table": str, "bytes": int, "rows": int}


def marker_problem(record: object) -> str | None:
    """What makes a parsed marker invalid as a completion marker, or None (a marker without `files` is legacy)."""
    if not isinstance(record, dict):
        return f"not a completion marker (a JSON {type(record).__name__}, not an object)"
    for key in _MARKER_KEYS:
        if not isinstance(record.get(key), str) or not record[key]:
            return f"not a completion marker ({key!r} is {record.get(key, 'missing')!r}, not a string)"
    for key in ("checkpoint_fingerprint", "precision"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"not a completion marker ({key!r} is {record[key]!r}, not a string)"
    if "sources" in record and (
        not isinstance(record["sources"], list) or not all(isinstance(x, str) for x in record["sources"])
    ):
        return f"not a completion marker ('sources' is {record['sources']!r}, not a list of markers)"
    if "files" not in record:
        return None
    if not isinstance(record["files"], list):
        return f"not a completion marker ('files' is {record['files']!r}, not a list)"
    for f in record["files"]:
        if not isinstance(f, dict):
            return f"not a completion marker (a file entry is {f!r}, not an object)"
        for key, kind in _FILE_KEYS.items():
            value = f.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
                return f"not a completion marker (file entry {key!r} is {value!r})"
        for key in ("crc32", "file_rows"):
            if f.get(key) is not None and (not isinstance(f[key], int) or isinstance(f[key], bool)):
                return f"not a completion marker (file entry {key!r} is {f[key]!r})"
    return None


@dataclass(frozen=True)
class Problem:
    """Something `lake check` found: kind is broken | stale | orphaned | temporary | stale-lease | legacy |
    catalogue."""

    kind: str
    path: str  # the marker, file or lease (relative to the lake root)
    detail: str
    delete: tuple[str, ...] = ()  # what --repair deletes

    def __str__(self) -> str:
        return f"{self.kind:<11} {self.path}: {self.detail}"


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


LEFT_OUT_BROKEN = "whose files are missing or changed"
LEFT_OUT_SOURCES = "whose source languages changed or are gone"
LEFT_OUT_PIVOT = "whose pivot is missing or does not verify"
LEFT_OUT_SETTINGS = "computed with other settings or weights than their pivot"
LEFT_OUT_PRECISION = "computed at another precision than their pivot (rerun with --force, or set dtype and device)"


def _label(record: dict | None, rel: str) -> str:
    if isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("model", "checkpoint", "lang")):
        pivot = record.get("pivot_lang")
        pair = f"{pivot}-{record['lang']}" if record.get("sources") and isinstance(pivot, str) else record["lang"]
        return f"{record['model']} @ {record['checkpoint']}: {pair}"
    return f"{rel}:"


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


def visible(ok: dict[str, dict], done_marker) -> tuple[list[dict], list[Problem], list[str], list[tuple[str, str]]]:
    """The consistency rules over verified markers (path -> record): a language counts when its pivot's marker
    verifies with the same checkpoint_fingerprint and precision; a pair computed from stored states (`sources`)
    when both sources verify with the fingerprints it was computed from. Returns (complete records, stale
    problems, one line per left-out language, (reason, label) per left-out language)."""
    complete, problems, excluded, left_out = [], [], [], []
    pivots: dict[tuple[str, str, str], str] = {}  # done_marker slugs every value: once per checkpoint and pivot
    for rel, record in ok.items():
        what = f"{record['model']} @ {record['checkpoint']}, pivot {record['pivot_lang']}, {record['lang']}"
        label = _label(record, rel)
        if "sources" in record:  # a pair computed from two languages' stored states: both must be current
            gone = [r for r in record["sources"] if r not in ok]
            other = [
                r
                for r in record["sources"]
                if r in ok and ok[r].get("checkpoint_fingerprint") != record.get("checkpoint_fingerprint")
            ]
            if not gone and record.get("fingerprint") != "+".join(ok[r]["fingerprint"] for r in record["sources"]):
                other = list(record["sources"])  # a source language was recomputed since the pair was
            if gone or other:
                detail = f"its source languages changed or are gone ({', '.join(gone + other)})"
                excluded.append(f"{what}: {detail}")
                left_out.append((LEFT_OUT_SOURCES, label))
                problems.append(Problem("stale", rel, detail, (rel,)))
            else:
                complete.append(record)
            continue
        key = (record["model"], record["checkpoint"], record["pivot_lang"])
        pivot_rel = pivots.get(key) or pivots.setdefault(key, done_marker(*key, record["pivot_lang"]))
        pivot = ok.get(pivot_rel)
        if pivot is None:
            excluded.append(f"{what}: its pivot's marker {pivot_rel} is missing or does not verify")
            left_out.append((LEFT_OUT_PIVOT, label))
            continue
        if pivot.get("checkpoint_fingerprint") != record.get("checkpoint_fingerprint"):
            detail = (
                f"computed with other settings or weights than its pivot (checkpoint_fingerprint "
                f"{record.get('checkpoint_fingerprint')!r} vs {pivot.get('checkpoint_fingerprint')!r})"
            )
            excluded.append(f"{what}: {detail}")
            left_out.append((LEFT_OUT_SETTINGS, label))
            problems.append(Problem("stale", rel, detail, (rel,)))
            continue
        if pivot.get("precision") and record.get("precision") and pivot["precision"] != record["precision"]:
            detail = (
                f"computed as {record['precision']}, its pivot as {pivot['precision']} (dtype or device 'auto' "
                "resolved on other hardware): rerun with --force, or set dtype and device"
            )
            excluded.append(f"{what}: {detail}")
            left_out.append((LEFT_OUT_PRECISION, f"{label} as {record['precision']}, pivot {pivot['precision']}"))
            problems.append(Problem("stale", rel, detail, (rel,)))
            continue
        complete.append(record)
    return complete, problems, excluded, left_out


@dataclass
class ViewFiles:
    """What the views read: table -> files, and for compacted files of which only some languages are current,
    file -> the (pivot_lang, lang) keys (pair tables) or (lang,) keys to read from it."""

    files: dict[str, list[str]]
    partial: dict[str, dict[str, list[tuple[str, ...]]]] = field(default_factory=dict)

    @classmethod
    def of(cls, complete: list[dict], free: dict[str, list[str]]) -> ViewFiles:
        files: dict[str, dict[str, None]] = {t: {} for t in (*TABLES_WITH_MARKERS, *FREE_TABLES)}
        keys: dict[str, dict[tuple[str, ...], int]] = {}  # compacted file -> current key -> its rows there
        whole: dict[str, int] = {}
        for record in complete:
            for f in record["files"]:
                if f["table"] not in files:
                    continue
                files[f["table"]][f["path"]] = None
                if f.get("file_rows") is not None:  # a compacted file: which of its languages are current
                    whole[f["path"]] = f["file_rows"]
                    key = (record["pivot_lang"], record["lang"]) if f["table"] in PAIR_TABLES else (record["lang"],)
                    keys.setdefault(f["path"], {})[key] = f["rows"]
        for table, paths in free.items():
            files[table].update(dict.fromkeys(paths))
        partial: dict[str, dict[str, list[tuple[str, ...]]]] = {}
        for table, paths in files.items():
            for path in paths:
                if path in whole and sum(keys[path].values()) != whole[path]:
                    partial.setdefault(table, {})[path] = sorted(keys[path])
        return cls({t: sorted(v) for t, v in files.items()}, partial)


@dataclass
class Lease:
    """A claim on (model, checkpoint) by one run: other runs with other settings are refused while it is live."""

    lake: Lake
    model: str
    checkpoint: str
    checkpoint_fingerprint: str
    run_id: str
    path: str
    timeout_s: float

    def _record(self) -> dict:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "timeout_s": self.timeout_s,
        }

    def renew(self) -> None:
        """Refresh the heartbeat (call well within timeout_s, e.g. after each language)."""
        self.lake.storage.write_bytes(self.path, json.dumps(self._record()).encode())

    def release(self) -> None:
        self.lake.storage.delete(self.path)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


LEASE_TIMEOUT_S = 900.0  # a lease whose heartbeat is older than this is stale (its run died) and is taken over
TABLES_WITH_MARKERS = ("sentence_states", "neuron_counts", "similarity", "matches")
FREE_TABLES = ("runs", "benchmarks", "attempts")  # no markers: each file is one complete write


class Lake:
    """The lake's layout, atomic writes and verified completion markers over one storage root (local or URI).

    Paths handed out and taken (language_file, files, WrittenFile.path, marker records) are relative to the
    root, so a lake can be copied or moved; `uri_of(path)` gives the full path or URI.
    """

    def __init__(self, root: str | Path | Lake) -> None:
        self.storage = root.storage if isinstance(root, Lake) else Storage.from_root(root)

    def __getstate__(self) -> dict:  # the storage ships its URI and settings; each process builds its filesystem
        return {"storage": self.storage}

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    @property
    def uri(self) -> str:
        """The absolute local path or the URI of the lake."""
        return self.storage.uri

    @property
    def root(self) -> Path:
        """The root as a local Path (local lakes only)."""
        if not self.storage.is_local:
            raise NeuronxaError(f"lake {self.uri!r} is not a local directory")
        return Path(self.storage.base)

    def uri_of(self, path: str) -> str:
        return self.storage.full_uri(self.storage.relative(path))

    def exists(self) -> bool:
        return self.storage.exists()

    def check_writable(self) -> None:
        """Raise ValueError naming the lake and the cause unless it can be written (seconds; before models load)."""
        self.storage.check_writable()
        self._reject_schema_1()

    # -- layout --------------------------------------------------------------------------------------------------
    def _partition(self, table: str, model: str, checkpoint: str, **more: str) -> str:
        parts = [table, f"model={slug(model)}", f"checkpoint={slug(checkpoint)}"]
        parts += [f"{key}={slug(value)}" for key, value in more.items()]
        return "/".join(parts)

    def language_file(self, table: str, model: str, checkpoint: str, lang: str, pivot: str | None = None) -> str:
        if table in PAIR_TABLES and not pivot:
            raise NeuronxaError(f"table {table!r} is per pivot and language: pass pivot (got {pivot!r})")
        extra = {"pivot_lang": pivot} if table in PAIR_TABLES else {}
        return self._partition(table, model, checkpoint, **extra, lang=lang) + "/part-0.parquet"

    def done_marker(self, model: str, checkpoint: str, pivot: str, lang: str) -> str:
        return self._partition("_done", model, checkpoint, pivot_lang=pivot) + f"/lang={slug(lang)}.json"

    def _lease_dir(self, model: str, checkpoint: str) -> str:
        return self._partition("_leases", model, checkpoint)

    # -- writing -------------------------------------------------------------------------------------------------
    def write(
        self, table: str, data: pa.Table | dict[str, Any], path: str | Path, state_dtype: str = "float32"
    ) -> WrittenFile:
        """Write rows of a known table to path (relative to the root), atomically, with the table's schema."""
        schema = table_schema(table, state_dtype)
        data = pa.table(data, schema=schema) if isinstance(data, dict) else data.cast(schema)
        rel = self.storage.relative(path)
        options = WRITE_OPTIONS.get(table, {})
        sink = pa.BufferOutputStream()  # the bytes once in memory (compressed, smaller than the table): checksummed
        pq.write_table(data, sink, compression="zstd", row_group_size=64 * 1024, **options)
        buffer = sink.getvalue()
        self.storage.write_bytes(rel, buffer)
        return WrittenFile(rel, buffer.size, data.num_rows, table, crc32_of(buffer))

    def write_run(self, row: dict) -> WrittenFile:
        """One row of the runs table (a rerun adds a file; latest_runs keeps the newest)."""
        path = self._partition("runs", row["model"], row["checkpoint"]) + f"/{slug(row['run_id'])}.parquet"
        return self.write("runs", {k: [row.get(k)] for k in SCHEMAS["runs"].names}, path)

    def write_benchmarks(self, name: str, table: pa.Table) -> WrittenFile:
        """Downstream results (benchmark, lang, value[, model, checkpoint]) under benchmarks/{name}.parquet."""
        schema = SCHEMAS["benchmarks"]
        cols = {
            f.name: table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
            for f in schema
        }
        return self.write("benchmarks", pa.table(cols, schema=schema), f"benchmarks/{slug(name)}.parquet")

    def write_attempts(self, run_id: str, part: int, rows: list[dict]) -> WrittenFile:
        """Attempts of a run's languages (one row per try: ok | failed | lost), one file per part."""
        schema = SCHEMAS["attempts"]
        cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
        return self.write("attempts", cols, f"attempts/run_id={slug(run_id)}/part-{int(part):05d}.parquet")

    def mark_done(
        self,
        model: str,
        checkpoint: str,
        pivot: str,
        lang: str,
        fingerprint: str,
        info: dict,
        files: list[WrittenFile] | None = None,
    ) -> None:
        """Write the language's completion marker, last: it names every file with its size and rows."""
        record = {
            "fingerprint": fingerprint,
            "checkpoint_fingerprint": info.get("checkpoint_fingerprint", ""),
            **info,
            "model": model,
            "checkpoint": checkpoint,
            "pivot_lang": pivot,
            "lang": lang,
            "schema_version": SCHEMA_VERSION,
            "host": socket.gethostname(),
            "written_at": time.time(),
            "files": [f.record() for f in files or []],
        }
        rel = self.done_marker(model, checkpoint, pivot, lang)
        data = json.dumps(record).encode()
        self.storage.write_bytes(rel, data)
        # after the marker (markers are the truth): the catalogue entry that readers open the lake from
        Catalog(self.storage).commit({rel: record}, self.marker_index, sizes={rel: len(data)})

    def markers(self, prefix: str = "_done") -> dict[str, dict]:
        """Marker path -> record of every valid marker under prefix (read in parallel; invalid ones left out)."""
        return self.marker_index(prefix)[0]

    def marker_index(self, prefix: str = "_done", listed: list[Entry] | None = None, workers: int = 16):
        """({marker path: record}, {marker path: bytes}) of every valid marker under prefix (or of listed)."""
        entries = self.storage.list(prefix) if listed is None else listed
        entries = [e for e in entries if e.path.endswith(".json") and not posixpath.basename(e.path).startswith(".")]

        def read(rel: str) -> dict | None:
            try:
                return self._read_marker(rel)
            except (OSError, ValueError):
                return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            records = dict(zip([e.path for e in entries], pool.map(read, [e.path for e in entries])))
        return {r: v for r, v in records.items() if v is not None}, {e.path: e.size for e in entries if records[e.path]}

    def reconcile(self, model: str, checkpoint: str) -> int:
        """Bring the catalogue in line with one checkpoint's markers (a writer that died between its marker and
        its catalogue entry, a marker deleted by hand); returns the markers changed. Called under a run's lease."""
        prefix = self._partition("_done", model, checkpoint) + "/"
        catalog = Catalog(self.storage)
        state = catalog.load() or CatalogState()
        markers, sizes = self.marker_index(prefix)
        current = {rel: r for rel, r in state.markers.items() if rel.startswith(prefix)}
        changes: dict[str, dict | None] = {rel: r for rel, r in markers.items() if current.get(rel) != r}
        changes.update({rel: None for rel in current if rel not in markers})
        if changes:
            catalog.commit(changes, self.marker_index, sizes={r: sizes[r] for r in changes if r in sizes})
            log.info("lake %s: catalogue brought in line with %d marker(s) of %s @ %s", self.uri, len(changes),
                     model, checkpoint)  # fmt: skip
        return len(changes)

    # -- reading and verification --------------------------------------------------------------------------------
    def _read_marker(self, rel: str) -> dict:
        """The marker's record, validated (NeuronxaError, a ValueError, when it is JSON but not a marker)."""
        record = json.loads(self.storage.read_bytes(rel))
        wrong = marker_problem(record)
        if wrong:
            raise NeuronxaError(wrong)
        if "files" in record and rel != self.done_marker(
            record["model"], record["checkpoint"], record["pivot_lang"], record["lang"]
        ):
            raise NeuronxaError(
                f"the marker of {record['model']} @ {record['checkpoint']}, pivot {record['pivot_lang']}, "
                f"{record['lang']} lies at another language's path"
            )
        return record

    def verify(self, record: dict, sizes: dict[str, int] | None = None, checksums: bool = False) -> list[str]:
        """What is wrong with a marker's files (missing, other size, unreadable footer, other row count, and with
        checksums=True other bytes than the recorded CRC-32); [] if ok.

        sizes: path -> bytes from one listing (saves a request per file on object stores)."""
        if "files" not in record:
            return ["the marker lists no files (written by an older neuronxa_ray)"]
        wrong = []
        for f in record["files"]:
            path = f["path"]
            size = sizes.get(path) if sizes is not None else getattr(self.storage.info(path), "size", None)
            if size is None:
                wrong.append(f"{path} is missing")
                continue
            if size != f["bytes"]:
                wrong.append(f"{path} has {size} bytes, the marker recorded {f['bytes']}")
                continue
            try:
                if checksums and f.get("crc32") is not None:
                    data = self.storage.read_bytes(path)
                    if crc32_of(data) != f["crc32"]:
                        wrong.append(f"{path} has other bytes than written (checksum {crc32_of(data):08x}, the "
                                     f"marker recorded {f['crc32']:08x})")  # fmt: skip
                        continue
                    rows = pq.read_metadata(pa.BufferReader(data)).num_rows
                else:
                    with self.storage.open_input_file(path) as src:
                        rows = pq.read_metadata(src).num_rows
            except (OSError, pa.ArrowException) as e:
                wrong.append(f"{path} is not readable Parquet ({' '.join(str(e).split())[:120]})")
                continue
            expected = f.get("file_rows", f["rows"])
            if rows != expected:
                wrong.append(f"{path} has {rows} rows, the marker recorded {expected}")
        return wrong

    def completion(self, model: str, checkpoint: str, pivot: str, lang: str) -> dict | None:
        """The language's marker record when it exists and its files verify; else None (warning what is wrong)."""
        rel = self.done_marker(model, checkpoint, pivot, lang)
        try:
            record = self._read_marker(rel)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning(
                "lake %s: completion marker %s is unreadable (%s); the language will be redone", self.uri, rel, e
            )
            return None
        wrong = self.verify(record)
        if wrong:
            log.warning(
                "lake %s: %s @ %s, pivot %s, %s is not complete: %s; it will be redone",
                self.uri,
                model,
                checkpoint,
                pivot,
                lang,
                "; ".join(wrong),
            )
            return None
        return record

    def is_done(self, model: str, checkpoint: str, pivot: str, lang: str, fingerprint: str) -> bool:
        record = self.completion(model, checkpoint, pivot, lang)
        return record is not None and record.get("fingerprint") == fingerprint

    def files(self, table: str) -> list[str]:
        """Every Parquet file of a table (relative paths), complete or not; temporary files excluded."""
        return [e.path for e in self.storage.list(table) if _is_parquet(e.path)]

    def read_states(self, model: str, checkpoint: str, lang: str) -> dict[str, np.ndarray]:
        """method -> [n, layers, dim] float32 states of one language, as written by write_states."""
        path = self.storage.path(self.language_file("sentence_states", model, checkpoint, lang))
        table = pq.read_table(path, columns=["sentence", "method", "layer", "state"], filesystem=self.storage.fs)
        out: dict[str, np.ndarray] = {}
        methods = table.column("method").to_numpy(zero_copy_only=False)
        for method in dict.fromkeys(methods):
            sub = table.filter(pa.compute.equal(table.column("method"), method))
            sent = sub.column("sentence").to_numpy()
            layer = sub.column("layer").to_numpy()
            values = sub.column("state").combine_chunks().flatten().to_numpy().astype(np.float32)
            dim = len(values) // len(sent)
            arr = np.zeros((sent.max() + 1, layer.max() + 1, dim), dtype=np.float32)
            arr[sent, layer] = values.reshape(len(sent), dim)
            out[str(method)] = arr
        return out

    def _reject_schema_1(self, entries: list[Entry] | None = None) -> None:
        entries = self.storage.list("_done") if entries is None else entries
        if any("/pivot=" in e.path for e in entries):
            raise NeuronxaError(
                f"lake {self.uri!r} was written by schema 1 (column pivot, partitions pivot=); this version reads "
                f"schema {SCHEMA_VERSION} (pivot_lang): rerun into a new lake"
            )

    def scan(self, workers: int = 16, checksums: bool = False) -> Scan:
        """Read and verify every marker (one listing, markers and Parquet footers read in parallel; with checksums
        every byte of every file against its recorded CRC-32), and every runs/benchmarks/attempts footer."""
        entries = self.storage.list()
        self._reject_schema_1(entries)
        sizes = {e.path: e.size for e in entries}
        marker_paths = [e.path for e in entries if e.path.startswith("_done/") and e.path.endswith(".json")]

        def load(rel: str) -> tuple[str, dict | None, list[str]]:
            try:
                record = self._read_marker(rel)
            except (OSError, ValueError) as e:
                return rel, None, [f"unreadable marker ({' '.join(str(e).split())[:160]})"]
            return rel, record, self.verify(record, sizes, checksums)

        free = [e.path for e in entries if e.path.split("/", 1)[0] in FREE_TABLES and _is_parquet(e.path)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(load, marker_paths))
            unreadable = dict(zip(free, pool.map(self._unreadable, free)))
        problems: list[Problem] = []
        ok: dict[str, dict] = {}
        for rel, record, wrong in results:
            if not wrong:
                ok[rel] = record
        named_by_ok = {f["path"] for r in ok.values() for f in r["files"]}
        left_out: list[tuple[str, str]] = []
        for rel, record, wrong in results:
            if wrong:
                own = tuple(f["path"] for f in (record or {}).get("files", []) if f["path"] not in named_by_ok)
                own = tuple(p for p in own if p in sizes)
                kind = "legacy" if record is not None and "files" not in record else "broken"
                problems.append(Problem(kind, rel, "; ".join(wrong), (rel, *own)))
                left_out.append((LEFT_OUT_BROKEN, _label(record, rel)))
        complete, stale, excluded, more = visible(ok, self.done_marker)
        problems += stale
        left_out += more
        for rel, why in unreadable.items():
            if why:
                problems.append(Problem("broken", rel, why, (rel,)))
        # Orphans: Parquet files no verified marker names, outside (model, checkpoint)s a live run is writing, and
        # not superseded by a compaction (those are deleted once no reader can be using them).
        live = {posixpath.dirname(lease) for lease in self._live_leases(entries, problems)}
        named = named_by_ok | {f["path"] for _, r, _ in results if r for f in r.get("files", [])}
        state = self._catalog_state(quiet=True)
        superseded = set(state.superseded) if state else set()
        for e in entries:
            head = e.path.split("/", 1)[0]
            base = posixpath.basename(e.path)
            if (base.startswith(".") and base.endswith(".tmp")) or head == "_probe":
                if head == "_catalog" and not _stale_temporary(e):
                    continue  # any writer may be committing right now: only an old one is left over
                if "_leases/" + "/".join(e.path.split("/")[1:3]) not in live:  # else a live run is writing it
                    problems.append(Problem("temporary", e.path, "left by an interrupted write", (e.path,)))
            elif head in TABLES_WITH_MARKERS and _is_parquet(e.path) and e.path not in named:
                key = "_leases/" + "/".join(e.path.split("/")[1:3])
                if key not in live and e.path not in superseded:
                    problems.append(Problem("orphaned", e.path, "no completion marker names it", (e.path,)))
        parsed = {rel: r for rel, r, _ in results if r is not None}
        free_ok = {t: [p for p in free if p.startswith(t + "/") and not unreadable[p]] for t in FREE_TABLES}
        return Scan(complete, problems, excluded, left_out, free_ok, parsed, state)

    def _unreadable(self, rel: str) -> str | None:
        """Why a runs/benchmarks/attempts file cannot be read as Parquet, or None."""
        try:
            with self.storage.open_input_file(rel) as src:
                pq.read_metadata(src)
            return None
        except (OSError, pa.ArrowException) as e:
            return f"not readable Parquet ({' '.join(str(e).split())[:120]})"

    def _catalog_state(self, quiet: bool = False) -> CatalogState | None:
        try:
            return Catalog(self.storage).load()
        except (OSError, ValueError, pa.ArrowException) as e:
            if not quiet:
                log.warning("lake %s: the catalogue is unreadable (%s); reading every marker", self.uri, e)
            return None

    def _live_leases(self, entries: list[Entry], problems: list[Problem]) -> list[str]:
        live = []
        for e in entries:
            if not (e.path.startswith("_leases/") and e.path.endswith(".json")):
                continue
            try:
                record = json.loads(self.storage.read_bytes(e.path))
                age = time.time() - float(record["heartbeat"])
            except (OSError, ValueError, KeyError, TypeError):
                problems.append(Problem("stale-lease", e.path, "unreadable lease", (e.path,)))
                continue
            if not lease_alive(record, age, LEASE_TIMEOUT_S):
                detail = f"run {record.get('run_id')} on {record.get('host')}: no heartbeat for {age:.0f}s"
                problems.append(Problem("stale-lease", e.path, detail, (e.path,)))
            else:
                live.append(e.path)
        return live

    def view_files(self, workers: int = 16) -> ViewFiles:
        """What the views read: the files of complete, consistent languages (from the catalogue when the lake has
        one, checked against one listing of each table's sizes; else from every marker, verified), and the runs,
        benchmarks and attempts files whose Parquet footer reads. What is left out is said in one line."""
        state = self._catalog_state()
        if state is None:
            scan = self.scan(workers)
            complete, left_out, free = scan.complete, scan.left_out, scan.free
            bad_free = [p for p in scan.problems if p.path.split("/", 1)[0] in FREE_TABLES]
        else:
            markers = self._listed_markers(state)
            sizes = {p: n for t in TABLES_WITH_MARKERS for p, n in self.storage.sizes(t).items()}
            ok, left_out = {}, []
            for rel, record in markers.items():
                files = record.get("files")
                if isinstance(files, list) and all(sizes.get(f["path"]) == f["bytes"] for f in files):
                    ok[rel] = record
                else:
                    left_out.append((LEFT_OUT_BROKEN, _label(record, rel)))
            complete, _, _, more = visible(ok, self.done_marker)
            left_out += more
            listed = sorted(p for t in FREE_TABLES for p in self.storage.sizes(t) if _is_parquet(p))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                why = dict(zip(listed, pool.map(self._unreadable, listed)))
            free = {t: [p for p in listed if p.startswith(t + "/") and not why[p]] for t in FREE_TABLES}
            bad_free = [Problem("broken", p, w, (p,)) for p, w in why.items() if w]
        if left_out:
            log.warning("lake %s: %s", self.uri, summarise_left_out(left_out))
        for p in bad_free:
            log.warning("lake %s: skipped unreadable file %s (%s)", self.uri, p.path, p.detail)
        return ViewFiles.of(complete, free)

    def _listed_markers(self, state: CatalogState) -> dict[str, dict]:
        """The catalogue's records of the markers one listing of _done/ shows: a marker the catalogue lacks or
        holds at another size (a writer died between the two, a marker rewritten) is read; one deleted is gone."""
        listed = {p: n for p, n in self.storage.sizes("_done").items() if p.endswith(".json")}
        out, unread = {}, []
        for path, size in listed.items():
            record = state.markers.get(path)
            if record is not None and state.sizes.get(path, -1) == size:
                out[path] = record
            else:
                unread.append(Entry(path, size))
        if unread:
            out.update(self.marker_index(listed=unread)[0])
        return out

    def verified_files(self, workers: int = 16) -> dict[str, list[str]]:
        """table -> the files views may read (see view_files)."""
        return self.view_files(workers).files

    def tidy(self, model: str, checkpoint: str, run_id: str) -> list[str]:
        """Delete what dead runs left in one checkpoint (temporary files, stale leases) when no other live run
        writes it; called by a run that holds its lease. Returns the deleted paths."""
        self.reconcile(model, checkpoint)
        leases = [e for e in self.storage.list(self._lease_dir(model, checkpoint)) if e.path.endswith(".json")]
        others, dead = [], []
        for e in leases:
            try:
                record = json.loads(self.storage.read_bytes(e.path))
                alive = lease_alive(record, time.time() - float(record["heartbeat"]), LEASE_TIMEOUT_S)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                alive, record = False, {}
            if record.get("run_id") == run_id:
                continue
            (others if alive else dead).append(e.path)
        if others:
            return []
        deleted = []
        for table in TABLES_WITH_MARKERS:
            for e in self.storage.list(self._partition(table, model, checkpoint)):
                base = posixpath.basename(e.path)
                if base.startswith(".") and base.endswith(".tmp"):
                    deleted.append(e.path)
        deleted += [e.path for e in self.storage.list("_catalog") if _stale_temporary(e)]
        for rel in deleted + dead:
            self.storage.delete(rel)
        if deleted or dead:
            log.info(
                "lake %s: removed %d file(s) left by interrupted runs of %s @ %s",
                self.uri,
                len(deleted + dead),
                model,
                checkpoint,
            )
        return deleted + dead

    def check(self, repair: bool = False) -> list[Problem]:
        """What is broken (checksums included), stale or orphaned, and whether the catalogue agrees with the
        markers; with repair, delete what is wrong (a rerun recomputes exactly those) and rebuild the catalogue
        from the markers."""
        scan = self.scan(checksums=True)
        problems = scan.problems + self._catalog_problems(scan)
        if repair:
            for p in problems:
                for rel in p.delete:
                    self.storage.delete(rel)
                    log.info("deleted %s", rel)
            if problems or scan.catalog is not None:
                from neuronxa_ray.lake.compaction import vacuum

                kept = vacuum(self, scan.catalog)
                Catalog(self.storage).rebuild(self.marker_index, kept)
                scan = self.scan(checksums=True)
            problems = scan.problems + self._catalog_problems(scan)
        return problems

    def _catalog_problems(self, scan: Scan) -> list[Problem]:
        """The catalogue against the markers (both as read by scan): missing, or naming other records."""
        if scan.catalog is None:
            if not scan.parsed:
                return []
            detail = "the lake has no catalogue (written before catalogues): every query reads every marker"
            return [Problem("catalogue", "_catalog", detail + "; --repair builds it")]
        listed = scan.catalog.markers
        differ = sorted(
            set(listed) ^ set(scan.parsed)
            | {r for r in listed if r in scan.parsed and not _same_commit(listed[r], scan.parsed[r])}
        )
        if not differ:
            return []
        detail = f"{len(differ)} marker(s) differ from the catalogue (e.g. {differ[0]}); --repair rebuilds it"
        return [Problem("catalogue", "_catalog", detail)]

    # -- concurrent writers --------------------------------------------------------------------------------------
    def acquire(
        self, model: str, checkpoint: str, checkpoint_fingerprint: str, run_id: str, timeout_s: float = LEASE_TIMEOUT_S
    ) -> Lease:
        """Claim (model, checkpoint) for a run. Runs with the same checkpoint_fingerprint share it (they write the
        same bytes); a live lease with another fingerprint raises ValueError naming that run; stale ones are
        taken over. Write-then-list: of two conflicting runs racing, at most one proceeds."""
        lease = Lease(
            self,
            model,
            checkpoint,
            checkpoint_fingerprint,
            run_id,
            f"{self._lease_dir(model, checkpoint)}/{slug(run_id)}.json",
            timeout_s,
        )
        lease.renew()
        for e in self.storage.list(self._lease_dir(model, checkpoint)):
            if e.path == lease.path or not e.path.endswith(".json"):
                continue
            try:
                other = json.loads(self.storage.read_bytes(e.path))
                age = time.time() - float(other["heartbeat"])
            except FileNotFoundError:
                continue  # released meanwhile
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("lake %s: removing unreadable lease %s", self.uri, e.path)
                self.storage.delete(e.path)
                continue
            if not lease_alive(other, age, timeout_s):
                log.warning(
                    "lake %s: taking over the stale lease of run %s on %s (its process is gone, or no heartbeat "
                    "for %.0fs)",
                    self.uri,
                    other.get("run_id"),
                    other.get("host"),
                    age,
                )
                self.storage.delete(e.path)
                continue
            if other.get("checkpoint_fingerprint") != checkpoint_fingerprint:
                lease.release()
                raise NeuronxaError(
                    f"lake {self.uri!r}: {model} @ {checkpoint} is being written by run {other.get('run_id')} on "
                    f"{other.get('host')} (pid {other.get('pid')}) with other settings (checkpoint_fingerprint "
                    f"{other.get('checkpoint_fingerprint')!r}, this run {checkpoint_fingerprint!r}); wait for it, "
                    "or write another lake"
                )
        return lease


def lease_alive(record: dict, age: float, timeout_s: float) -> bool:
    """A lease is live while its heartbeat is fresh and, on this host, its process still exists (a run killed with
    SIGKILL leaves a fresh heartbeat behind; on another host only the heartbeat's age can tell)."""
    if age > float(record.get("timeout_s", timeout_s)):
        return False
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
    return True


CATALOG_TEMPORARY_S = 30.0  # a catalogue write takes milliseconds: a temporary file this old was left by a kill


def _stale_temporary(e: Entry) -> bool:
    base = posixpath.basename(e.path)
    return base.startswith(".") and base.endswith(".tmp") and time.time() - (e.mtime or 0.0) > CATALOG_TEMPORARY_S


def _same_commit(a: dict, b: dict) -> bool:
    """Two records of one marker that differ only in who wrote them when (runs with the same settings write the
    same files)."""
    who = ("written_at", "host", "run_id")
    return {k: v for k, v in a.items() if k not in who} == {k: v for k, v in b.items() if k not in who}


def _is_parquet(path: str) -> bool:
    return path.endswith(".parquet") and not posixpath.basename(path).startswith(".")


def list_array(values: np.ndarray, dtype: pa.DataType) -> pa.ListArray:
    """[rows, dim] numpy -> a list<dtype> column without a Python loop."""
    rows, dim = values.shape
    offsets = pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=dtype))


def states_table(
    model: str,
    checkpoint: str,
    lang: str,
    sentence_ids: list[str],
    token_counts: list[int],
    states: dict[str, np.ndarray],
    state_dtype: str = "float32",
) -> dict[str, Any]:
    """Columns of sentence_states for one language; states[method] is [n, layers, dim]."""
    cols: dict[str, list] = {k: [] for k in ("method", "sentence", "layer", "state")}
    for method, arr in states.items():
        n, n_layers, dim = arr.shape
        cols["method"].append(np.full(n * n_layers, method, dtype=object))
        cols["sentence"].append(np.repeat(np.arange(n, dtype=np.int32), n_layers))
        cols["layer"].append(np.tile(np.arange(n_layers, dtype=np.int16), n))
        kind = (np.float16, pa.float16()) if state_dtype == "float16" else (np.float32, pa.float32())
        flat = np.ascontiguousarray(arr, dtype=kind[0]).reshape(n * n_layers, dim)
        cols["state"].append(list_array(flat, kind[1]))
    sentence = np.concatenate(cols["sentence"])
    rows = len(sentence)
    return {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "sentence": sentence,
        "sentence_id": pa.array([sentence_ids[i] for i in sentence], pa.string()),
        "method": pa.array(np.concatenate(cols["method"]), pa.string()),
        "layer": np.concatenate(cols["layer"]),
        "n_tokens": pa.array(np.asarray(token_counts, dtype=np.int32)[sentence]),
        "state": pa.concat_arrays(cols["state"]),
    }


def neuron_counts_table(
    model: str, checkpoint: str, lang: str, n_active: np.ndarray, abs_sum: np.ndarray, n_tokens: int
) -> dict[str, Any]:
    """Columns of neuron_counts; n_active and abs_sum are [layers, d_ff]."""
    n_layers, d_ff = n_active.shape
    rows = n_layers * d_ff
    return {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "layer": np.repeat(np.arange(n_layers, dtype=np.int16), d_ff),
        "neuron": np.tile(np.arange(d_ff, dtype=np.int32), n_layers),
        "n_active": np.rint(n_active).astype(np.int64).reshape(-1),
        "abs_sum": abs_sum.astype(np.float64).reshape(-1),
        "n_tokens": np.full(rows, n_tokens, dtype=np.int64),
    }


def similarity_table(
    model: str, checkpoint: str, pivot: str, lang: str, matrices: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Columns of similarity; matrices[method] is [layers, n_pivot, n_lang] float64 (row i = pivot sentence i)."""
    methods, layers, rows_i, cosine = [], [], [], []
    for method, mats in matrices.items():
        n_layers, n, m = mats.shape
        methods.append(np.full(n_layers * n, method, dtype=object))
        layers.append(np.repeat(np.arange(n_layers, dtype=np.int16), n))
        rows_i.append(np.tile(np.arange(n, dtype=np.int32), n_layers))
        cosine.append(list_array(np.ascontiguousarray(mats, dtype=np.float64).reshape(n_layers * n, m), pa.float64()))
    rows = sum(len(x) for x in methods)
    return {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "pivot_lang": pa.array([pivot] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "method": pa.array(np.concatenate(methods), pa.string()),
        "layer": np.concatenate(layers),
        "pivot_sentence": np.concatenate(rows_i),
        "cosine": pa.concat_arrays(cosine),
    }


def matches_table(
    model: str, checkpoint: str, pivot: str, lang: str, stats: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Columns of matches; stats[method] holds scoring.MatchStats arrays ([layers, n] each; NaN / -1 become NULL)."""
    cols: dict[str, list] = {k: [] for k in ("method", "layer", "sentence", *MATCH_COLUMNS)}
    for method, st in stats.items():
        n_layers, n = st["diagonal"].shape
        cols["method"].append(np.full(n_layers * n, method, dtype=object))
        cols["layer"].append(np.repeat(np.arange(n_layers, dtype=np.int16), n))
        cols["sentence"].append(np.tile(np.arange(n, dtype=np.int32), n_layers))
        for key in MATCH_COLUMNS:
            cols[key].append(np.asarray(st[key]).reshape(-1))
    flat = {k: np.concatenate(v) for k, v in cols.items()}
    rows = len(flat["sentence"])
    out: dict[str, Any] = {
        "model": pa.array([model] * rows, pa.string()),
        "checkpoint": pa.array([checkpoint] * rows, pa.string()),
        "pivot_lang": pa.array([pivot] * rows, pa.string()),
        "lang": pa.array([lang] * rows, pa.string()),
        "method": pa.array(flat["method"], pa.string()),
        "layer": flat["layer"],
        "sentence": flat["sentence"],
    }
    for key in ("diagonal", "row_rival", "column_rival"):
        values = flat[key].astype(np.float64)
        out[key] = pa.array(values, pa.float64(), mask=np.isnan(values))
    for key in ("row_hit", "column_hit"):
        out[key] = pa.array(flat[key].astype(bool), pa.bool_())
    for key in ("row_rank", "column_rank"):
        values = flat[key].astype(np.int32)
        out[key] = pa.array(values, pa.int32(), mask=values < 1)
    return out


MATCH_COLUMNS = ("diagonal", "row_rival", "column_rival", "row_hit", "column_hit", "row_rank", "column_rank")
