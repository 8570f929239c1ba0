"""DuckDB over the lake: raw views on the Parquet files, then the analysis views defined in sql/*.sql.

The .sql files live at the repository's top level (sql/) and install as the package `neuronxa_ray.views`; they
are read with importlib.resources, so an installed wheel finds them wherever it lives.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa

from neuronxa_ray.lake import SCHEMAS, Lake
from neuronxa_ray.stats import register as register_functions

RAW_TABLES = ("sentence_states", "neuron_counts", "similarity", "runs", "benchmarks")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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


def connect(lake_root: str | Path, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection exposing every lake table and view (see README: 'The lake')."""
    lake = Lake(lake_root)
    con = duckdb.connect(database)
    for table in RAW_TABLES:
        if lake.files(table):
            glob = _quote(str(lake.root / table / "**" / "*.parquet"))
            con.execute(
                f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet({glob}, union_by_name = true, "
                "hive_partitioning = false)"
            )
        else:  # no files yet: an empty view with the table's columns, so every query still binds
            con.register(f"_empty_{table}", pa.table({f.name: pa.array([], f.type) for f in SCHEMAS[table]}))
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _empty_{table}")
    register_functions(con)  # p-values, confidence intervals, canonical_lang(): the views below call them
    for _, text in sql_texts():
        con.execute(text)
    return con
