"""The Parquet lake: explicit schemas, deterministic paths, atomic writes, completion markers, the runs table.

Layout (hive-style directories; every file also carries its model/checkpoint/lang columns, so a single file
read by pyarrow or polars is self-describing):
    {lake}/sentence_states/model={m}/checkpoint={c}/lang={l}/part-0.parquet
    {lake}/neuron_counts/model={m}/checkpoint={c}/lang={l}/part-0.parquet
    {lake}/similarity/model={m}/checkpoint={c}/pivot_lang={p}/lang={l}/part-0.parquet
    {lake}/runs/model={m}/checkpoint={c}/{run_id}.parquet
    {lake}/benchmarks/{name}.parquet            (downstream results imported by `neuronxa-ray import-benchmarks`)
    {lake}/_done/model={m}/checkpoint={c}/pivot_lang={p}/lang={l}.json   (written last: that language is complete)
Every file is written under a temporary name and renamed into place, so readers never see a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
    "similarity": {
        "use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method"],
        "use_byte_stream_split": ["cosine.list.element"],
    },
}


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


class Lake:
    """Paths and atomic Parquet writes under one lake root (a local or shared directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _partition(self, table: str, model: str, checkpoint: str, **more: str) -> Path:
        path = self.root / table / f"model={slug(model)}" / f"checkpoint={slug(checkpoint)}"
        for key, value in more.items():
            path = path / f"{key}={slug(value)}"
        return path

    def language_file(self, table: str, model: str, checkpoint: str, lang: str, pivot: str | None = None) -> Path:
        extra = {"pivot_lang": pivot} if table == "similarity" else {}
        return self._partition(table, model, checkpoint, **extra, lang=lang) / "part-0.parquet"

    def done_marker(self, model: str, checkpoint: str, pivot: str, lang: str) -> Path:
        return self._partition("_done", model, checkpoint, pivot_lang=pivot).joinpath(f"lang={slug(lang)}.json")

    def is_done(self, model: str, checkpoint: str, pivot: str, lang: str, fingerprint: str) -> bool:
        marker = self.done_marker(model, checkpoint, pivot, lang)
        try:
            return json.loads(marker.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError):
            return False

    def mark_done(self, model: str, checkpoint: str, pivot: str, lang: str, fingerprint: str, info: dict) -> None:
        marker = self.done_marker(model, checkpoint, pivot, lang)
        _atomic_write_bytes(marker, json.dumps({"fingerprint": fingerprint, **info}).encode())

    def write(self, table: str, data: pa.Table | dict[str, Any], path: Path, state_dtype: str = "float32") -> Path:
        """Write rows of a known table to path, atomically, with the table's explicit schema."""
        schema = table_schema(table, state_dtype)
        if isinstance(data, dict):
            data = pa.table(data, schema=schema)
        else:
            data = data.cast(schema)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(data, tmp, compression="zstd", row_group_size=64 * 1024, **WRITE_OPTIONS.get(table, {}))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def files(self, table: str) -> list[Path]:
        base = self.root / table
        return sorted(p for p in base.rglob("*.parquet") if not p.name.startswith(".")) if base.exists() else []

    def read_states(self, model: str, checkpoint: str, lang: str) -> dict[str, np.ndarray]:
        """method -> [n, layers, dim] float32 states of one language, as written by write_states."""
        path = self.language_file("sentence_states", model, checkpoint, lang)
        table = pq.read_table(path, columns=["sentence", "method", "layer", "state"])
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
