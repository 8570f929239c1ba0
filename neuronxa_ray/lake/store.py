"""The Lake: one object over a lake's root (a local directory or an object-store URI) that hands out its layout,
writes its tables atomically with their schemas, writes and reads completion markers, and delegates leases, the
scan, the views' files and `lake check` to their modules.

Local files are written under a temporary name and renamed into place; object-store files once under their final
name (storage.py). A language counts only when its marker verifies (files present with the recorded sizes and row
counts; `lake check` also compares every byte with the recorded CRC-32). Paths handed out and taken
(language_file, files, WrittenFile.path, marker records) are relative to the root, so a lake can be copied or
moved; `uri_of(path)` gives the full path or URI.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neuronxa_ray.lake import layout
from neuronxa_ray.lake.catalog import Catalog, CatalogState, UnreadableCatalog
from neuronxa_ray.lake.check import check as check_lake
from neuronxa_ray.lake.encoders import states_arrays
from neuronxa_ray.lake.leases import LEASE_TIMEOUT_S, Lease, acquire, tidy
from neuronxa_ray.lake.markers import WrittenFile, crc32_of, is_complete, marker_record, read_marker, read_markers
from neuronxa_ray.lake.markers import verify as verify_files
from neuronxa_ray.lake.opening import view_files
from neuronxa_ray.lake.scan import Scan, ViewFiles
from neuronxa_ray.lake.scan import scan as scan_lake
from neuronxa_ray.lake.schema import SCHEMAS, WRITE_OPTIONS, table_schema
from neuronxa_ray.lake.storage import Entry, Storage
from neuronxa_ray.lake.visibility import Problem

log = logging.getLogger(__name__)


class Lake:
    """The lake's layout, atomic writes and verified completion markers over one storage root (local or URI)."""

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

    def uri_of(self, path: str) -> str:
        return self.storage.full_uri(self.storage.relative(path))

    def exists(self) -> bool:
        return self.storage.exists()

    def check_writable(self) -> None:
        """Raise NeuronxaError naming the lake and the cause unless it can be written (seconds; before models load)."""
        self.storage.check_writable()
        layout.reject_schema_1(self.storage.list("_done"), self.uri)

    # -- layout (layout.py) --------------------------------------------------------------------------------------
    def _partition(self, table: str, model: str, checkpoint: str, **more: str) -> str:
        return layout.partition(table, model, checkpoint, **more)

    def language_file(self, table: str, model: str, checkpoint: str, lang: str, pivot: str | None = None) -> str:
        return layout.language_file(table, model, checkpoint, lang, pivot)

    def done_marker(self, model: str, checkpoint: str, pivot: str, lang: str) -> str:
        return layout.done_marker(model, checkpoint, pivot, lang)

    def files(self, table: str) -> list[str]:
        """Every Parquet file of a table (relative paths), complete or not; temporary files excluded."""
        return [e.path for e in self.storage.list(table) if layout.is_parquet(e.path)]

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
        path = self._partition("runs", row["model"], row["checkpoint"]) + f"/{layout.slug(row['run_id'])}.parquet"
        return self.write("runs", {k: [row.get(k)] for k in SCHEMAS["runs"].names}, path)

    def write_benchmarks(self, name: str, table: pa.Table) -> WrittenFile:
        """Downstream results (benchmark, lang, value[, model, checkpoint]) under benchmarks/{name}.parquet."""
        schema = SCHEMAS["benchmarks"]
        cols = {
            f.name: table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
            for f in schema
        }
        return self.write("benchmarks", pa.table(cols, schema=schema), f"benchmarks/{layout.slug(name)}.parquet")

    def write_attempts(self, run_id: str, part: int, rows: list[dict]) -> WrittenFile:
        """Attempts of a run's languages (one row per try: ok | failed | lost), one file per part."""
        schema = SCHEMAS["attempts"]
        cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
        return self.write("attempts", cols, f"attempts/run_id={layout.slug(run_id)}/part-{int(part):05d}.parquet")

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
        record = marker_record(model, checkpoint, pivot, lang, fingerprint, info, files or [])
        rel = self.done_marker(model, checkpoint, pivot, lang)
        data = json.dumps(record).encode()
        self.storage.write_bytes(rel, data)
        # after the marker (markers are the truth): the catalogue entry that readers open the lake from
        Catalog(self.storage).commit({rel: record}, self.marker_index, sizes={rel: len(data)})

    def reconcile(self, model: str, checkpoint: str, state: CatalogState | None = None) -> int:
        """Bring the catalogue in line with one checkpoint's markers (a writer that died between its marker and
        its catalogue entry, a marker deleted by hand); returns the markers changed. Called under a run's lease.
        state: the catalogue as just read (else it is read)."""
        prefix = self._partition("_done", model, checkpoint) + "/"
        catalog = Catalog(self.storage)
        try:
            state = state or catalog.load() or CatalogState()
        except UnreadableCatalog as e:  # readers read every marker meanwhile; a run goes on
            log.warning("lake %s: the catalogue is unreadable (%s); `neuronxa-ray lake check --repair` rebuilds it",
                        self.uri, e)  # fmt: skip
            return 0
        found, sizes = self.marker_index(prefix)
        current = {rel: r for rel, r in state.markers.items() if rel.startswith(prefix)}
        changes: dict[str, dict | None] = {rel: r for rel, r in found.items() if current.get(rel) != r}
        changes.update({rel: None for rel in current if rel not in found})
        if changes:
            catalog.commit(changes, self.marker_index, sizes={r: sizes[r] for r in changes if r in sizes})
            log.info("lake %s: catalogue brought in line with %d marker(s) of %s @ %s", self.uri, len(changes),
                     model, checkpoint)  # fmt: skip
        return len(changes)

    # -- reading and verification (markers.py) -------------------------------------------------------------------
    def markers(self, prefix: str = "_done") -> dict[str, dict]:
        """Marker path -> record of every valid marker under prefix (read in parallel; invalid ones left out)."""
        return self.marker_index(prefix)[0]

    def marker_index(self, prefix: str = "_done", listed: list[Entry] | None = None, workers: int = 16):
        """({marker path: record}, {marker path: bytes}) of every valid marker under prefix (or of listed)."""
        return read_markers(self.storage, self._read_marker, prefix, listed, workers)

    def _read_marker(self, rel: str) -> dict:
        """The marker's record, validated (NeuronxaError when it is JSON but not a marker)."""
        return read_marker(self.storage, rel)

    def verify(self, record: dict, sizes: dict[str, int] | None = None, checksums: bool = False) -> list[str]:
        """What is wrong with a marker's files; [] if ok (markers.py)."""
        return verify_files(self.storage, record, sizes, checksums)

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
            log.warning("lake %s: %s @ %s, pivot %s, %s is not complete: %s; it will be redone", self.uri, model,
                        checkpoint, pivot, lang, "; ".join(wrong))  # fmt: skip
            return None
        return record

    def is_done(self, model: str, checkpoint: str, pivot: str, lang: str, fingerprint: str) -> bool:
        return is_complete(self.completion(model, checkpoint, pivot, lang), fingerprint)

    def read_states(self, model: str, checkpoint: str, lang: str) -> dict[str, np.ndarray]:
        """method -> [n, layers, dim] float32 states of one language, as written by write_states."""
        path = self.storage.path(self.language_file("sentence_states", model, checkpoint, lang))
        table = pq.read_table(path, columns=["sentence", "method", "layer", "state"], filesystem=self.storage.fs)
        return states_arrays(table)

    # -- the whole lake (scan.py, check.py) ----------------------------------------------------------------------
    def scan(self, workers: int = 16, checksums: bool = False) -> Scan:
        """Every marker read and verified, the consistency rules applied, and what is wrong (scan.py)."""
        return scan_lake(self, workers, checksums)

    def view_files(self, workers: int = 16) -> ViewFiles:
        """What the views read (opening.py)."""
        return view_files(self, workers)

    def verified_files(self, workers: int = 16) -> dict[str, list[str]]:
        """table -> the files views may read (see view_files)."""
        return self.view_files(workers).files

    def check(self, repair: bool = False) -> list[Problem]:
        """What is broken, stale or orphaned; with repair, delete it and rebuild the catalogue (check.py)."""
        return check_lake(self, repair)

    # -- concurrent writers (leases.py) --------------------------------------------------------------------------
    def acquire(
        self,
        model: str,
        checkpoint: str,
        checkpoint_fingerprint: str,
        run_id: str,
        timeout_s: float = LEASE_TIMEOUT_S,
    ) -> Lease:
        """Claim (model, checkpoint) for a run; a live lease with other settings refuses it (leases.py)."""
        return acquire(self, model, checkpoint, checkpoint_fingerprint, run_id, timeout_s)

    def tidy(self, model: str, checkpoint: str, run_id: str) -> list[str]:
        """Bring the catalogue in line, then delete what dead runs left in one checkpoint (leases.py)."""
        self.reconcile(model, checkpoint)
        return tidy(self, model, checkpoint, run_id)
