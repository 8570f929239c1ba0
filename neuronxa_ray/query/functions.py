"""Every DuckDB function the views in sql/ call, registered on a connection in one place: correlation p-values and
Fisher-z intervals (stats), the sentence bootstrap (intervals), language codes (corpus.languages)."""

from __future__ import annotations

from neuronxa_ray.corpus.languages import canonical_lang, language_name
from neuronxa_ray.query.intervals import paired_bootstrap_arrow, sentence_bootstrap_arrow
from neuronxa_ray.query.stats import fisher_ci_high, fisher_ci_low, pearson_pvalue, spearman_pvalue


def sql_type(name: str):
    """A DuckDB type object by name (duckdb.sqltypes in DuckDB 2, duckdb.typing before)."""
    try:
        from duckdb import sqltypes as types
    except ImportError:  # DuckDB 1.x
        from duckdb import typing as types
    return getattr(types, name)


def register(con) -> None:
    """Register the statistics, bootstrap and language-code functions the views in sql/ use on a DuckDB connection."""
    double, bigint, varchar = sql_type("DOUBLE"), sql_type("BIGINT"), sql_type("VARCHAR")
    scalars = [
        ("pearson_pvalue", pearson_pvalue, [double, bigint], double),
        ("spearman_pvalue", spearman_pvalue, [double, bigint], double),
        ("fisher_ci_low", fisher_ci_low, [double, bigint, double], double),
        ("fisher_ci_high", fisher_ci_high, [double, bigint, double], double),
        ("canonical_lang", canonical_lang, [varchar], varchar),
        ("language_name", language_name, [varchar], varchar),
    ]
    for name, fn, args, result in scalars:
        con.create_function(name, fn, args, result, null_handling="special", side_effects=False)
    con.create_function(
        "sentence_bootstrap",
        sentence_bootstrap_arrow,
        ["INTEGER[]", "DOUBLE", "DOUBLE", "BIGINT", "BIGINT"],
        "STRUCT(estimate DOUBLE, low DOUBLE, high DOUBLE)",
        type="arrow",
        null_handling="special",
        side_effects=False,
    )
    con.create_function(
        "paired_bootstrap",
        paired_bootstrap_arrow,
        ["INTEGER[]", "INTEGER[]", "DOUBLE", "DOUBLE", "DOUBLE", "BIGINT", "BIGINT"],
        "STRUCT(score_a DOUBLE, score_b DOUBLE, difference DOUBLE, low DOUBLE, high DOUBLE, p_value DOUBLE)",
        type="arrow",
        null_handling="special",
        side_effects=False,
    )
