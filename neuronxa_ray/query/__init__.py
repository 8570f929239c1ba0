"""Querying the lake: a DuckDB connection whose raw views read only verified files and whose analysis views are the
SQL in sql/ (installed as neuronxa_ray.views), plus every DuckDB function those views call.

May import: neuronxa_ray.lake (to list verified files), corpus.languages, numpy/scipy/pyarrow/duckdb. Never torch or
Ray: a query never loads a model.
"""

from neuronxa_ray.query.connect import connect, sql_texts

__all__ = ["connect", "sql_texts"]
