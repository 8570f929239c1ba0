"""Committing one unit to the lake: each table to its file for this (pivot, language), then the completion marker
naming them. The marker is written last, so a unit cut short (a kill, a full disk, a lost node) has no marker and
is redone; a reader never sees a half-written unit. The worker commits languages, execution.pairs commits pairs.
"""

from __future__ import annotations

import pyarrow as pa

from neuronxa_ray.lake import Lake, WrittenFile


def commit_unit(
    lake: Lake,
    model: str,
    checkpoint: str,
    pivot: str,
    lang: str,
    tables: list[tuple[str, pa.Table, str | None]],
    fingerprint: str,
    info: dict,
    keep: list[WrittenFile] = (),
) -> list[WrittenFile]:
    """Write (table name, rows, state dtype or None) each to the unit's file, then the marker listing them and
    `keep` (files of the unit already in the lake that stay part of it). Returns the files written."""
    written = []
    for name, rows, state_dtype in tables:
        path = lake.language_file(name, model, checkpoint, lang, pivot)
        extra = {"state_dtype": state_dtype} if state_dtype else {}
        written.append(lake.write(name, rows, path, **extra))
    paths = {f.path for f in written}
    files = [f for f in keep if f.path not in paths] + written
    lake.mark_done(model, checkpoint, pivot, lang, fingerprint, info, files=files)
    return written
