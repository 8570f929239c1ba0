"""The lake's tables: one explicit pyarrow schema per table (never inferred), its Parquet write options, and which
tables are per language, per pivot and language, or free of markers."""

from __future__ import annotations

import pyarrow as pa

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
    # One row per (method, layer, sentence i) of a pivot/language pair: what the scores need from C, O(n) per
    # layer (compute.matching). NULL diagonal: a zero/NaN state; NULL rival: no non-NaN rival; NULL rank: NULL diagonal.
    "matches": _schema(
        "matches",
        [
            *_KEYS,
            pa.field("pivot_lang", pa.string(), False),
            pa.field("lang", pa.string(), False),
            pa.field("method", pa.string(), False),
            pa.field("layer", pa.int16(), False),
            pa.field("sentence", pa.int32(), False),  # i: pivot sentence i and its parallel lang sentence i
            pa.field("diagonal", pa.float64()),  # C[i, i]
            pa.field("row_rival", pa.float64()),  # max_{j != i} C[i, j]
            pa.field("column_rival", pa.float64()),  # max_{j != i} C[j, i]
            pa.field("row_hit", pa.bool_(), False),  # diagonal > row_rival (pivot -> lang retrieval)
            pa.field("column_hit", pa.bool_(), False),  # diagonal > column_rival (lang -> pivot retrieval)
            pa.field("row_rank", pa.int32()),  # 1 + #{j != i: C[i, j] >= C[i, i]}
            pa.field("column_rank", pa.int32()),  # 1 + #{j != i: C[j, i] >= C[i, i]}
        ],
    ),
    # Derived at compaction (lake.compaction) from a checkpoint's merged matches by sql/15_hits.sql, named by the
    # same markers: per layer and per sentence, the counts every score view needs (matches has n x layers rows per
    # pair and method; layer_hits layers, sentence_hits n). Never written by a run.
    "layer_hits": _schema(
        "layer_hits",
        [
            *_KEYS,
            pa.field("pivot_lang", pa.string(), False),
            pa.field("lang", pa.string(), False),
            pa.field("method", pa.string(), False),
            pa.field("layer", pa.int16(), False),
            pa.field("n_sentences", pa.int32(), False),
            pa.field("mutual_hits", pa.int32(), False),  # row_hit and column_hit
            pa.field("pivot_to_lang_hits", pa.int32(), False),  # row_hit
            pa.field("lang_to_pivot_hits", pa.int32(), False),  # column_hit
            pa.field("pivot_to_lang_top1", pa.int32(), False),  # row_rank <= 1
            pa.field("pivot_to_lang_top5", pa.int32(), False),
            pa.field("pivot_to_lang_top10", pa.int32(), False),
            pa.field("lang_to_pivot_top1", pa.int32(), False),  # column_rank <= 1
            pa.field("lang_to_pivot_top5", pa.int32(), False),
            pa.field("lang_to_pivot_top10", pa.int32(), False),
            pa.field("pivot_to_lang_rr_sum", pa.float64(), False),  # sum of 1 / row_rank
            pa.field("lang_to_pivot_rr_sum", pa.float64(), False),  # sum of 1 / column_rank
        ],
    ),
    "sentence_hits": _schema(
        "sentence_hits",
        [
            *_KEYS,
            pa.field("pivot_lang", pa.string(), False),
            pa.field("lang", pa.string(), False),
            pa.field("method", pa.string(), False),
            pa.field("sentence", pa.int32(), False),
            pa.field("mutual_hits", pa.int32(), False),  # over the sentence's layers
            pa.field("pivot_to_lang_hits", pa.int32(), False),
            pa.field("lang_to_pivot_hits", pa.int32(), False),
            pa.field("n_layers", pa.int32(), False),
        ],
    ),
    # alignment_interval at its defaults (95%, 1,000 resamples, seed 0) per pair and method: its bootstraps are
    # what training_curve costs; stored beside the hits they resample.
    "alignment_interval": _schema(
        "alignment_interval",
        [
            *_KEYS,
            pa.field("method", pa.string(), False),
            pa.field("pivot_lang", pa.string(), False),
            pa.field("lang", pa.string(), False),
            *[
                pa.field(f"{what}_{part}", pa.float64())
                for what in ("score", "pivot_to_lang", "lang_to_pivot")
                for part in ("mean", "ci_low", "ci_high")
            ],
            pa.field("n_layers", pa.int32()),
            pa.field("n_sentences", pa.int32()),
            pa.field("level", pa.float64()),
            pa.field("resamples", pa.int32()),
            pa.field("seed", pa.int64()),
        ],
    ),
    # One row per sentence of a language evaluated by a job with interventions (docs/INTERVENTIONS.md): the
    # language model's next-token NLL, so perplexity aggregates exactly over any subset: exp(sum nll / sum n).
    "perplexity": _schema(
        "perplexity",
        [
            *_KEYS,  # model: the intervention's own name, `{base_model} [off {intervention}]`, or base_model itself
            pa.field("pivot_lang", pa.string(), False),  # the pivot its alignment scores were computed against
            pa.field("lang", pa.string(), False),
            pa.field("sentence", pa.int32(), False),
            pa.field("sentence_id", pa.string(), False),
            pa.field("nll_sum", pa.float64(), False),  # sum over the sentence's predicted tokens of -log p(token)
            pa.field("n_predicted", pa.int32(), False),  # its tokens after the first
            pa.field("base_model", pa.string(), False),  # the model as the job names it
            pa.field("intervention", pa.string(), False),  # none | lape:fra | random:fra:seed0 | file:name
            pa.field("switched_off", pa.string()),  # the language whose neurons are off (random: whose count), or all
            pa.field("n_neurons", pa.int32(), False),  # neurons switched off, over all layers (0: none)
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
    "attempts": _schema(
        "attempts",
        [
            pa.field("run_id", pa.string(), False),
            *_KEYS,
            pa.field("lang", pa.string(), False),
            pa.field("attempt", pa.int32(), False),  # 1 for the first try of the language in this run
            pa.field("node", pa.string()),
            pa.field("device", pa.string()),
            pa.field("started_at", pa.timestamp("us", tz="UTC")),  # the worker's: its extraction began
            pa.field("finished_at", pa.timestamp("us", tz="UTC")),  # the worker's: its write ended (else the driver's)
            pa.field("status", pa.string(), False),  # ok | failed | lost
            pa.field("error", pa.string()),
            pa.field("extracted_at", pa.timestamp("us", tz="UTC")),  # the worker's: its forward passes ended
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
    # States: no dictionary and no statistics for the list of floats (neither helps a reader; both cost the writer:
    # 2.6x faster writes, the same bytes, measured in benchmarks/bench_writes.py)
    "sentence_states": {
        "use_dictionary": ["model", "checkpoint", "lang", "method", "sentence_id"],
        "write_statistics": ["model", "checkpoint", "lang", "sentence", "method", "layer"],
    },
    "similarity": {
        "use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method"],
        "use_byte_stream_split": ["cosine.list.element"],
    },
    "perplexity": {
        "use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "base_model", "intervention", "switched_off"]
    },
    "layer_hits": {"use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method"]},
    "sentence_hits": {"use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method"]},
    "alignment_interval": {"use_dictionary": ["model", "checkpoint", "method", "pivot_lang", "lang"]},
    "matches": {
        "use_dictionary": ["model", "checkpoint", "pivot_lang", "lang", "method", "layer"],
        "use_byte_stream_split": ["diagonal", "row_rival", "column_rival"],
    },
}

# keyed by pivot_lang as well as lang
PAIR_TABLES = ("similarity", "matches", "layer_hits", "sentence_hits", "alignment_interval")
# from matches, at compaction: no run writes them
DERIVED_TABLES = ("layer_hits", "sentence_hits", "alignment_interval")

TABLES_WITH_MARKERS = (
    "sentence_states",
    "neuron_counts",
    "similarity",
    "matches",
    "perplexity",
    *DERIVED_TABLES,
)
FREE_TABLES = ("runs", "benchmarks", "attempts")  # no markers: each file is one complete write
MATCH_COLUMNS = ("diagonal", "row_rival", "column_rival", "row_hit", "column_hit", "row_rank", "column_rank")


def table_schema(table: str, state_dtype: str = "float32") -> pa.Schema:
    """The explicit schema of a table; sentence_states may store its states as float16 (half the bytes)."""
    schema = SCHEMAS[table]
    if table == "sentence_states" and state_dtype == "float16":
        i = schema.get_field_index("state")
        schema = schema.set(i, pa.field("state", pa.list_(pa.float16()), False))
    return schema
