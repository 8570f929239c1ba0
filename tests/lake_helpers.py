"""Completion markers for lakes that tests write table by table (the worker writes them last, for real runs):
views read only languages whose marker verifies."""

from __future__ import annotations

import pyarrow.parquet as pq

from neuronxa_ray.lake import PAIR_TABLES, TABLES_WITH_MARKERS, Lake, WrittenFile


def mark_complete(lake: Lake, pivot: str = "eng", checkpoint_fingerprint: str = "fp") -> int:
    """One marker per (model, checkpoint, lang) naming its files (pair tables against `pivot`), plus the pivot's
    own marker; returns the markers written."""
    groups: dict[tuple[str, str, str], list[WrittenFile]] = {}
    for table in TABLES_WITH_MARKERS:
        for rel in lake.files(table):
            path = lake.storage.path(rel)
            meta = pq.read_metadata(path, filesystem=lake.storage.fs)
            first = pq.read_table(path, filesystem=lake.storage.fs, columns=["model", "checkpoint", "lang"]).slice(0, 1)
            row = first.to_pylist()[0]
            if table in PAIR_TABLES and f"pivot_lang={pivot}/" not in rel:
                continue
            size = lake.storage.info(rel).size
            key = (row["model"], row["checkpoint"], row["lang"])
            groups.setdefault(key, []).append(WrittenFile(rel, size, meta.num_rows, table))
    info = {"checkpoint_fingerprint": checkpoint_fingerprint}
    for (model, checkpoint, lang), files in groups.items():
        lake.mark_done(model, checkpoint, pivot, lang, f"fp-{lang}", info, files)
    for model, checkpoint in {(m, c) for m, c, _ in groups}:
        if (model, checkpoint, pivot) not in groups:
            lake.mark_done(model, checkpoint, pivot, pivot, f"fp-{pivot}", info, [])
    return len(groups)
