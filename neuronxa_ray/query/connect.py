"""DuckDB over the lake: raw views on the Parquet files, then the analysis views defined in sql/*.sql.

The .sql files live at the repository's top level (sql/) and install as the package `neuronxa_ray.views`; they
are read with importlib.resources, so an installed wheel finds them wherever it lives.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from neuronxa_ray.lake import Lake, table_schema
from neuronxa_ray.lake.compaction import Derived
from neuronxa_ray.lake.schema import DERIVED_TABLES
from neuronxa_ray.query.functions import register as register_functions

# one schema in every file (sentence_states: float16 or float32)
UNIFORM = ("matches", "neuron_counts", "perplexity", *DERIVED_TABLES)
RAW_TABLES = (
    "sentence_states",
    "neuron_counts",
    "matches",
    "similarity",
    "perplexity",
    "runs",
    "benchmarks",
    "attempts",
)
# one small file per run, import or part: read as Arrow datasets with the table's schema (older files' missing
# columns as nulls), which bind without opening a file; DuckDB's union_by_name opens every file each time a view
# over them is bound (1.9 s for 500 checkpoints' runs files at connect)
SMALL_TABLES = ("runs", "benchmarks", "attempts")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _partial_select(con, name: str, source: str, keys: list[tuple[str, ...]], arrow: bool = False) -> str:
    """Rows of a compacted file whose (pivot_lang, lang) or (lang,) is among keys (the languages still current)."""
    columns = ["pivot_lang", "lang"] if len(keys[0]) == 2 else ["lang"]
    con.register(name, pa.table({c: [k[i] for k in keys] for i, c in enumerate(columns)}))
    scan = source if arrow else f"read_parquet([{source}], hive_partitioning = false)"
    return f"SELECT * FROM {scan} WHERE ({', '.join(columns)}) IN (SELECT ({', '.join(columns)}) FROM {name})"


def sql_texts() -> list[tuple[str, str]]:
    """(file name, SQL text) of every view file, in name order. NEURONXA_RAY_SQL_DIR overrides (for development)."""
    override = os.environ.get("NEURONXA_RAY_SQL_DIR")
    if override:
        files = sorted(Path(override).glob("*.sql"))
        texts = [(f.name, f.read_text(encoding="utf-8")) for f in files]
    else:
        root = resources.files("neuronxa_ray.views")
        texts = sorted((f.name, f.read_text(encoding="utf-8")) for f in root.iterdir() if f.name.endswith(".sql"))
    if not texts:
        raise FileNotFoundError("no SQL view files found (the package neuronxa_ray.views is empty)")
    return texts


def connect(lake: str | Path | Lake, database: str = ":memory:", reader: str = "auto") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection exposing every lake table and view (see README: 'The lake').

    Views read only verified files: languages whose completion marker verifies and agrees with its pivot's
    checkpoint_fingerprint; runs/benchmarks/attempts files whose footer reads (the rest are left out with a
    warning naming them). reader: 'duckdb' (DuckDB's own Parquet reader over a list of local files; runs,
    benchmarks and attempts always as Arrow datasets), 'arrow' (pyarrow datasets on the lake's filesystem, handed to
    DuckDB; works for every store, no DuckDB extension), 'auto' (duckdb for a local lake, arrow for object stores).
    """
    if reader not in ("auto", "duckdb", "arrow"):
        raise ValueError(f"reader {reader!r}: allowed auto, duckdb, arrow")
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    native = reader == "duckdb" or (reader == "auto" and lake.storage.is_local)
    if native and not lake.storage.is_local:
        raise ValueError(f"reader 'duckdb' needs a local lake; {lake.uri!r} is remote (use reader 'arrow')")
    view = lake.view_files()
    con = duckdb.connect(database)
    for table in RAW_TABLES:
        _bind(con, lake, native, table, table, view.files.get(table, []), view.partial.get(table, {}))
    # the score views count hits (sql/15_hits.sql): stored ones where a compaction derived them from a matches file
    # (the same name under layer_hits/ and sentence_hits/, named by the same markers, so the same languages are
    # current in all three), counted from the rest of matches
    stored = {t: set(view.files.get(t, [])) for t in DERIVED_TABLES}
    matches = view.files.get("matches", [])
    version = derived_version()  # stored by other view definitions: not covered (counted live until compacted again)
    covered = {p for p in matches if all(derived_path(p, t, version) in stored[t] for t in DERIVED_TABLES)}
    partial = view.partial.get("matches", {})
    live = [p for p in matches if p not in covered]
    _bind(con, lake, native, "_matches_live", "matches", live, {p: k for p, k in partial.items() if p not in covered})
    for t in DERIVED_TABLES:
        mine = [derived_path(p, t, version) for p in matches if p in covered]
        keys = {derived_path(p, t, version): k for p, k in partial.items() if p in covered}
        _bind(con, lake, native, f"_stored_{t}", t, mine, keys)
    define_views(con)
    return con


def define_views(con: duckdb.DuckDBPyConnection) -> None:
    """The functions and the views of sql/*.sql, over raw views already bound on con."""
    register_functions(con)  # p-values, confidence intervals, canonical_lang(): the views below call them
    for _, text in sql_texts():
        con.execute(text)


def derived_rows(matches: pa.Table) -> dict[str, pa.Table]:
    """The derived tables (layer_hits, sentence_hits, alignment_interval) of one checkpoint's matches rows: the views
    of sql/*.sql evaluated over those rows alone (every other table empty), in the tables' schemas. Compaction
    stores them; the views then read them instead of counting and resampling again."""
    con = duckdb.connect()
    try:
        for table in RAW_TABLES:
            _bind(con, None, False, table, table, [], {})
        for table in DERIVED_TABLES:
            _bind(con, None, False, f"_stored_{table}", table, [], {})
        con.register("_matches_rows", matches)
        con.execute("CREATE VIEW _matches_live AS SELECT * FROM _matches_rows")
        define_views(con)
        out = {}
        for table in DERIVED_TABLES:
            schema = table_schema(table)
            out[table] = con.sql(f"SELECT * FROM {table}").to_arrow_table().select(schema.names).cast(schema)
        return out
    finally:
        con.close()


def derived_tables() -> Derived:
    """What compaction stores beside merged matches: the views' derived tables (derived_rows), their version."""
    return Derived(derived_version(), derived_rows, derived_path)


def derived_path(matches_path: str, table: str, version: str) -> str:
    """The file of a derived table that a compaction wrote with a matches file: the same partition and name under
    table/, with the version of the views that computed it (compacted-{id}.{version}.parquet)."""
    rest = matches_path.split("/", 1)[1]
    return f"{table}/{rest.removesuffix('.parquet')}.{version}.parquet"


def derived_version() -> str:
    """A hash of what computes the derived tables (sql/15_hits.sql, sql/25_intervals.sql and the bootstrap's code):
    rows stored by other definitions are not read, and the next compaction replaces them."""
    from neuronxa_ray.query import intervals

    texts = dict(sql_texts())
    digest = hashlib.sha256()
    for name in ("15_hits.sql", "25_intervals.sql"):
        digest.update(texts.get(name, "").encode())
    digest.update(Path(intervals.__file__).read_bytes())
    return digest.hexdigest()[:10]


def _bind(con, lake: Lake | None, native: bool, name: str, table: str, paths: list[str], partial: dict) -> None:
    """CREATE VIEW name over the table's files paths (those in partial: only the rows of its current keys)."""
    import pyarrow.dataset as ds

    schema = table_schema(table)
    whole = [p for p in paths if p not in partial]
    partial = {p: k for p, k in partial.items() if p in paths}
    if not paths:  # no files yet: an empty view with the table's columns, so every query still binds
        con.register(f"_empty_{name}", pa.table({f.name: pa.array([], f.type) for f in schema}))
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")
    elif native and table not in SMALL_TABLES:
        parts = []
        if whole:
            listed = ", ".join(_quote(lake.storage.path(p)) for p in whole)
            union = "false" if table in UNIFORM else "true"  # union_by_name opens every file when views bind
            parts.append(f"SELECT * FROM read_parquet([{listed}], union_by_name = {union}, hive_partitioning = false)")
        for i, (path, keys) in enumerate(partial.items()):  # compacted files of which some languages are current
            parts.append(_partial_select(con, f"_keys_{name}_{i}", _quote(lake.storage.path(path)), keys))
        con.execute(f"CREATE OR REPLACE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))
    else:
        parts = []
        if whole:
            dataset = ds.dataset(
                [lake.storage.path(p) for p in whole], schema=schema, format="parquet", filesystem=lake.storage.fs
            )
            con.register(f"_arrow_{name}", dataset)
            parts.append(f"SELECT * FROM _arrow_{name}")
        for i, (path, keys) in enumerate(partial.items()):
            one = ds.dataset([lake.storage.path(path)], schema=schema, format="parquet", filesystem=lake.storage.fs)
            con.register(f"_arrow_{name}_{i}", one)
            parts.append(_partial_select(con, f"_keys_{name}_{i}", f"_arrow_{name}_{i}", keys, arrow=True))
        con.execute(f"CREATE OR REPLACE VIEW {name} AS " + " UNION ALL BY NAME ".join(parts))
