"""DuckDB over the lake: raw views on the Parquet files, then the analysis views defined in sql/*.sql."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa

from neuronxa_ray.lake import SCHEMAS, Lake

SQL_DIR = Path(os.environ.get("NEURONXA_RAY_SQL_DIR", Path(__file__).resolve().parent.parent / "sql"))

RAW_TABLES = ("sentence_states", "neuron_counts", "similarity", "runs", "benchmarks")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_files() -> list[Path]:
    files = sorted(SQL_DIR.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no SQL files in {SQL_DIR} (set NEURONXA_RAY_SQL_DIR to the repository's sql/)")
    return files


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
    for path in sql_files():
        con.execute(path.read_text(encoding="utf-8"))
    return con
