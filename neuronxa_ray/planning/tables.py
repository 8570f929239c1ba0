"""What a complete language holds for a job: which tables (states only when stored: store_states "auto" keeps
them while a checkpoint's stay under a budget).
"""

from __future__ import annotations

import logging

from neuronxa_ray.config.job import JobConfig
from neuronxa_ray.model.resolve import ResolvedModel

log = logging.getLogger(__name__)


STATE_BUDGET_BYTES = 2 * 1024**3  # store_states "auto": states are kept while a checkpoint's stay under this


def state_bytes_per_sentence(config: dict | None, state_dtype: str) -> int | None:
    """Bytes of one sentence's stored states (nas and nav per block, hidden and hidden_last per hidden_states
    index) from a model's config.json; None when the config does not say."""
    for cfg in (config or {}, (config or {}).get("text_config") or {}):
        layers, d_ff, d_model = (cfg.get(k) for k in ("num_hidden_layers", "intermediate_size", "hidden_size"))
        if all(isinstance(v, int) and v > 0 for v in (layers, d_ff, d_model)):
            return (2 * layers * d_ff + 2 * (layers + 1) * d_model) * (2 if state_dtype == "float16" else 4)
    return None


def resolve_store_states(job: JobConfig, resolved: ResolvedModel, n_languages: int, n_sentences: int) -> bool:
    """store_states as set; "auto": true when every pair is asked for (they are computed from stored states) or
    when the checkpoint's states stay under STATE_BUDGET_BYTES (an 8B model x FLORES-200 would need ~0.5 TB)."""
    if isinstance(job.store_states, bool):
        return job.store_states
    if job.pivots is not None:
        return True
    per_sentence = state_bytes_per_sentence(resolved.config(), job.state_dtype)
    if per_sentence is None or per_sentence * n_sentences * n_languages <= STATE_BUDGET_BYTES:
        return True
    log.info(
        "%s: states not stored (store_states: auto; %.1f GB for %d languages x %d sentences, over %.0f GB); "
        "scores and neuron statistics do not need them (set store_states: true to keep them)",
        job.source,
        per_sentence * n_sentences * n_languages / 1e9,
        n_languages,
        n_sentences,
        STATE_BUDGET_BYTES / 1e9,
    )
    return False


def required_tables(job: JobConfig, lang: str, store_states: bool | None = None) -> set[str]:
    """What a complete language holds for this job: a language done without states (or similarity) is not done
    for a job that asks for them."""
    tables = {"neuron_counts"}
    if job.interventions:  # every evaluation of such a job measures perplexity, the baseline included
        tables.add("perplexity")
    if job.store_states is True if store_states is None else store_states:
        tables.add("sentence_states")
    if lang != job.pivot:
        tables.add("matches")
        if job.store_similarity:
            tables.add("similarity")
    return tables
