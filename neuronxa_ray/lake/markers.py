"""Completion markers: what a marker records, whether one is valid, whether its files are still the ones written,
and the one rule of when a language (or a pair) counts as complete for a job.

A marker is written last, after every file it names (path, size, rows, CRC-32), so a language counts only when its
marker verifies; the fingerprint it carries says what the files were computed from.
"""

from __future__ import annotations

import json
import posixpath
import socket
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake.layout import done_marker
from neuronxa_ray.lake.schema import SCHEMA_VERSION
from neuronxa_ray.lake.storage import Entry, Storage


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


class BadMarker(NeuronxaError, ValueError):
    """A marker that is JSON but not a valid marker (or lies at another language's path). A ValueError, as unreadable
    JSON is: readers treat both alike (the language is redone; `lake check` reports it)."""


def pair_fingerprint(fp_pivot: str, fp_lang: str) -> str:
    """The fingerprint of a pair computed from two languages' stored states: both languages' fingerprints, so the
    pair is stale as soon as either language is recomputed."""
    return f"{fp_pivot}+{fp_lang}"


def is_complete(
    record: dict | None, fingerprint: str, tables: Iterable[str] = (), precision: str | None = None
) -> bool:
    """A verified marker record is complete for a job when its fingerprint is the one asked for, it holds at least
    these tables, and it was computed at the pivot's precision when both say."""
    if record is None or record.get("fingerprint") != fingerprint:
        return False
    if not set(tables) <= {f.get("table") for f in record.get("files", [])}:
        return False
    own = record.get("precision")
    return not (own and precision and own != precision)


def marker_record(
    model: str, checkpoint: str, pivot: str, lang: str, fingerprint: str, info: dict, files: list[WrittenFile]
) -> dict:
    """The record a completion marker holds: fingerprints, what info adds, the language's keys and every file."""
    return {
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
        "files": [f.record() for f in files],
    }


def read_marker(storage: Storage, rel: str) -> dict:
    """The marker's record, validated (BadMarker when it is JSON but not a marker)."""
    record = json.loads(storage.read_bytes(rel))
    wrong = marker_problem(record)
    if wrong:
        raise BadMarker(wrong)
    if "files" in record and rel != done_marker(
        record["model"], record["checkpoint"], record["pivot_lang"], record["lang"]
    ):
        raise BadMarker(
            f"the marker of {record['model']} @ {record['checkpoint']}, pivot {record['pivot_lang']}, "
            f"{record['lang']} lies at another language's path"
        )
    return record


def verify(storage: Storage, record: dict, sizes: dict[str, int] | None = None, checksums: bool = False) -> list[str]:
    """What is wrong with a marker's files (missing, other size, unreadable footer, other row count, and with
    checksums=True other bytes than the recorded CRC-32); [] if ok.

    sizes: path -> bytes from one listing (saves a request per file on object stores)."""
    if "files" not in record:
        return ["the marker lists no files (written by an older neuronxa_ray)"]
    wrong = []
    for f in record["files"]:
        size = sizes.get(f["path"]) if sizes is not None else getattr(storage.info(f["path"]), "size", None)
        problem = _file_problem(storage, f, size, checksums)
        if problem:
            wrong.append(problem)
    return wrong


def _file_problem(storage: Storage, f: dict, size: int | None, checksums: bool) -> str | None:
    """What is wrong with one file a marker names (size as listed, None: not listed as a file), or None."""
    path = f["path"]
    if size is None:
        return f"{path} is a directory, not a file" if storage.is_directory(path) else f"{path} is missing"
    if size != f["bytes"]:
        return f"{path} has {size} bytes, the marker recorded {f['bytes']}"
    try:
        if checksums and f.get("crc32") is not None:
            data = storage.read_bytes(path)
            if crc32_of(data) != f["crc32"]:
                return (f"{path} has other bytes than written (checksum {crc32_of(data):08x}, the "
                        f"marker recorded {f['crc32']:08x})")  # fmt: skip
            rows = pq.read_metadata(pa.BufferReader(data)).num_rows
        else:
            with storage.open_input_file(path) as src:
                rows = pq.read_metadata(src).num_rows
    except (OSError, pa.ArrowException) as e:
        return f"{path} is not readable Parquet ({' '.join(str(e).split())[:120]})"
    expected = f.get("file_rows", f["rows"])
    if rows != expected:
        return f"{path} has {rows} rows, the marker recorded {expected}"
    return None


def read_markers(
    storage: Storage,
    read: Callable[[str], dict],
    prefix: str = "_done",
    listed: list[Entry] | None = None,
    workers: int = 16,
) -> tuple[dict[str, dict], dict[str, int]]:
    """({marker path: record}, {marker path: bytes}) of every valid marker under prefix (or of listed), each read
    with read (in parallel; invalid ones left out)."""
    entries = storage.list(prefix) if listed is None else listed
    entries = [e for e in entries if e.path.endswith(".json") and not posixpath.basename(e.path).startswith(".")]

    def load(rel: str) -> dict | None:
        try:
            return read(rel)
        except (OSError, ValueError):
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        records = dict(zip([e.path for e in entries], pool.map(load, [e.path for e in entries])))
    return {r: v for r, v in records.items() if v is not None}, {e.path: e.size for e in entries if records[e.path]}


class MarkerSource(Protocol):
    """What the scan, the views and the catalogue read markers through: the Lake, whose methods a test may patch."""

    storage: Storage
    uri: str

    def _read_marker(self, rel: str) -> dict: ...

    def verify(self, record: dict, sizes: dict[str, int] | None = None, checksums: bool = False) -> list[str]: ...

    def marker_index(
        self, prefix: str = "_done", listed: list[Entry] | None = None, workers: int = 16
    ) -> tuple[dict[str, dict], dict[str, int]]: ...
