"""The Parquet lake: its layout, schemas, writes, completion markers, leases, catalogue, compaction, and the
scan / check / repair that decide what the views read.

May import only neuronxa_ray.errors, pyarrow, numpy and the optional object-store dependencies (never torch, Ray,
DuckDB or another neuronxa_ray package). `from neuronxa_ray.lake import Lake` is the way in; the names below are
what the rest of neuronxa_ray, the tests and the benchmarks use.
"""

from neuronxa_ray.lake.encoders import (
    list_array,
    matches_table,
    neuron_counts_table,
    perplexity_table,
    similarity_table,
    states_arrays,
    states_table,
)
from neuronxa_ray.lake.layout import slug
from neuronxa_ray.lake.leases import LEASE_TIMEOUT_S, Lease, lease_alive
from neuronxa_ray.lake.markers import WrittenFile, crc32_of, is_complete, marker_problem, pair_fingerprint
from neuronxa_ray.lake.scan import Scan, ViewFiles, summarise_left_out
from neuronxa_ray.lake.schema import (
    FREE_TABLES,
    MATCH_COLUMNS,
    METADATA_KEY,
    PAIR_TABLES,
    SCHEMA_VERSION,
    SCHEMAS,
    TABLES_WITH_MARKERS,
    WRITE_OPTIONS,
    table_schema,
)
from neuronxa_ray.lake.store import Lake
from neuronxa_ray.lake.visibility import (
    LEFT_OUT_BROKEN,
    LEFT_OUT_PIVOT,
    LEFT_OUT_PRECISION,
    LEFT_OUT_SETTINGS,
    LEFT_OUT_SOURCES,
    Problem,
    visible,
)

__all__ = [
    "FREE_TABLES",
    "LEASE_TIMEOUT_S",
    "LEFT_OUT_BROKEN",
    "LEFT_OUT_PIVOT",
    "LEFT_OUT_PRECISION",
    "LEFT_OUT_SETTINGS",
    "LEFT_OUT_SOURCES",
    "MATCH_COLUMNS",
    "METADATA_KEY",
    "PAIR_TABLES",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "TABLES_WITH_MARKERS",
    "WRITE_OPTIONS",
    "Lake",
    "Lease",
    "Problem",
    "Scan",
    "ViewFiles",
    "WrittenFile",
    "crc32_of",
    "is_complete",
    "lease_alive",
    "list_array",
    "marker_problem",
    "matches_table",
    "neuron_counts_table",
    "pair_fingerprint",
    "perplexity_table",
    "similarity_table",
    "slug",
    "states_arrays",
    "states_table",
    "summarise_left_out",
    "table_schema",
    "visible",
]
