"""Where everything lies in the lake: deterministic, path-safe partition paths, relative to the lake's root.

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
{lake}/{matches,neuron_counts,perplexity}/model={m}/checkpoint={c}/compacted-{id}.parquet   (compaction.py)
{lake}/{layer_hits,sentence_hits,alignment_interval}/model={m}/checkpoint={c}/compacted-{id}.parquet   (derived)
"""

from __future__ import annotations

import hashlib
import posixpath
import re

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake.schema import PAIR_TABLES, SCHEMA_VERSION
from neuronxa_ray.lake.storage import Entry


def slug(value: str) -> str:
    """A path-safe partition value; a short hash keeps distinct values distinct after replacement."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._") or "_"
    if safe != value:
        safe = f"{safe[:80]}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return safe


def partition(table: str, model: str, checkpoint: str, **more: str) -> str:
    """The directory of a table's (model, checkpoint[, more keys]) partition."""
    parts = [table, f"model={slug(model)}", f"checkpoint={slug(checkpoint)}"]
    parts += [f"{key}={slug(value)}" for key, value in more.items()]
    return "/".join(parts)


def language_file(table: str, model: str, checkpoint: str, lang: str, pivot: str | None = None) -> str:
    """The file of one language (and pivot, for the pair tables)."""
    if table in PAIR_TABLES and not pivot:
        raise NeuronxaError(f"table {table!r} is per pivot and language: pass pivot (got {pivot!r})")
    extra = {"pivot_lang": pivot} if table in PAIR_TABLES else {}
    return partition(table, model, checkpoint, **extra, lang=lang) + "/part-0.parquet"


def done_marker(model: str, checkpoint: str, pivot: str, lang: str) -> str:
    """The completion marker of one language computed against one pivot."""
    return partition("_done", model, checkpoint, pivot_lang=pivot) + f"/lang={slug(lang)}.json"


def lease_dir(model: str, checkpoint: str) -> str:
    """Where the runs writing one checkpoint hold their leases."""
    return partition("_leases", model, checkpoint)


def is_parquet(path: str) -> bool:
    """A Parquet file written whole (temporary files, dot-named, excluded)."""
    return path.endswith(".parquet") and not posixpath.basename(path).startswith(".")


def is_temporary(path: str) -> bool:
    """A file still being written, or left by an interrupted write."""
    base = posixpath.basename(path)
    return base.startswith(".") and base.endswith(".tmp")


def reject_schema_1(entries: list[Entry], uri: str) -> None:
    """Raise when the markers listed lie in schema 1's partitions (pivot=), which this version cannot read."""
    if any("/pivot=" in e.path for e in entries):
        raise NeuronxaError(
            f"lake {uri!r} was written by schema 1 (column pivot, partitions pivot=); this version reads "
            f"schema {SCHEMA_VERSION} (pivot_lang): rerun into a new lake"
        )
