"""Planning: jobs -> units of (model, checkpoint, language), minus what the lake verifiably holds. Pure: no Ray.

A checkpoint's fingerprint covers everything that changes its numbers: the settings marked in JobConfig, the
weights (file names, sizes and modification times of a local directory or GGUF; the resolved commit of a hub id),
the pivot, the sentence ids and the pivot's texts. A language's fingerprint adds its own texts. A language counts
as done only when its marker verifies and carries the current fingerprint, so new weights in the same directory,
another n_sentences or other data recompute the pivot and every language of that checkpoint — never a mix of old
and new under one score. A run that would recompute a pivot with other settings while languages it does not run
depend on the stored one is refused (they would drop out of every view) unless it is forced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field

from neuronxa_ray.config.job import Checkpoint, JobConfig
from neuronxa_ray.corpus.readers import ParallelCorpus
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import SCHEMA_VERSION, Lake
from neuronxa_ray.model.resolve import ResolvedModel, check_architecture, resolve_model
from neuronxa_ray.model.spec import ModelSpec

log = logging.getLogger(__name__)

METHOD_VERSION = "2"  # bump when the extraction or scoring changes numbers for the same inputs


def _digest(material: object) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_fingerprint(job: JobConfig, resolved: ResolvedModel, corpus: ParallelCorpus) -> str:
    return _digest(
        {
            "settings": job.fingerprint_settings(),
            "weights": resolved.identity,
            "pivot": job.pivot,
            "ids": corpus.ids,
            "pivot_text": corpus.sentences[job.pivot],
            "schema": SCHEMA_VERSION,
            "method": METHOD_VERSION,
        }
    )


def language_fingerprint(checkpoint_fp: str, lang: str, corpus: ParallelCorpus) -> str:
    return _digest({"checkpoint": checkpoint_fp, "lang": lang, "text": corpus.sentences[lang]})


@dataclass
class CheckpointPlan:
    """One (model, checkpoint) of one job: what to load, the data, the fingerprint, the languages still to run."""

    job: JobConfig
    checkpoint: Checkpoint
    spec: ModelSpec
    resolved: ResolvedModel
    corpus: ParallelCorpus
    fingerprint: str
    languages: list[str]  # pivot first
    todo: list[str]  # pivot first when it runs
    max_length: int | None
    lang_fingerprints: dict[str, str] = field(default_factory=dict)
    store_states: bool = True  # the job's store_states, "auto" resolved for this model and corpus

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.model_name, self.checkpoint.name)

    @property
    def pivot(self) -> str:
        return self.job.pivot

    @property
    def label(self) -> str:
        return f"{self.job.model_name} @ {self.checkpoint.name}"


def _tables(record: dict | None) -> set[str]:
    return {f.get("table") for f in (record or {}).get("files", [])}


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
    if job.store_states is True if store_states is None else store_states:
        tables.add("sentence_states")
    if lang != job.pivot:
        tables.add("matches")
        if job.store_similarity:
            tables.add("similarity")
    return tables


def _done(
    lake: Lake, job: JobConfig, name: str, lang: str, fingerprint: str, pivot: dict | None, store_states: bool
) -> bool:
    """Complete, current, holding what the job asks for, and computed at its pivot's precision."""
    record = lake.completion(job.model_name, name, job.pivot, lang)
    needed = required_tables(job, lang, store_states)
    if record is None or record.get("fingerprint") != fingerprint or not needed <= _tables(record):
        return False
    precision, pivot_precision = record.get("precision"), (pivot or {}).get("precision")
    return not (precision and pivot_precision and precision != pivot_precision)


def plan_checkpoint(
    job: JobConfig,
    checkpoint: Checkpoint,
    corpus: ParallelCorpus,
    lake: Lake,
    force: bool = False,
    recompute: frozenset[str] = frozenset(),
) -> CheckpointPlan:
    """Resolve the model (fails fast on a bad source), fingerprint it, and subtract what the lake holds."""
    spec = job.model_spec(checkpoint)
    resolved = resolve_model(spec)
    check_architecture(resolved, spec)
    max_length = job.max_length
    positions = resolved.max_positions()
    if positions is not None and (max_length is None or max_length > positions):
        if max_length is not None:
            log.info("%s: max_length %d capped at the model's %d positions", job.source, max_length, positions)
        max_length = positions
    fp = checkpoint_fingerprint(dataclasses.replace(job, max_length=max_length), resolved, corpus)
    languages = [job.pivot] + [lang for lang in corpus.languages if lang != job.pivot]
    lang_fps = {lang: language_fingerprint(fp, lang, corpus) for lang in languages}
    model, name = job.model_name, checkpoint.name
    store_states = resolve_store_states(job, resolved, len(languages), len(corpus.ids))
    if force:
        todo = list(languages)
    else:
        pivot_record = lake.completion(model, name, job.pivot, job.pivot)
        todo = [
            lang
            for lang in languages
            if lang in recompute or not _done(lake, job, name, lang, lang_fps[lang], pivot_record, store_states)
        ]
        stored_fp = (pivot_record or {}).get("checkpoint_fingerprint")
        if job.pivot in todo and stored_fp and stored_fp != fp:
            _refuse_replacing_pivot(job, checkpoint, lake, stored_fp, languages, max_length)
    # The other languages need the pivot's states: an actor reads them from the lake when they were stored, and
    # computes them (without writing them again) when they were not.
    return CheckpointPlan(
        job, checkpoint, spec, resolved, corpus, fp, languages, todo, max_length, lang_fps, store_states
    )


def _dependents(lake: Lake, model: str, name: str, pivot: str, checkpoint_fp: str) -> list[str]:
    """Languages whose markers say they were scored against the stored pivot (computed with checkpoint_fp)."""
    prefix = posixpath.dirname(lake.done_marker(model, name, pivot, pivot))
    langs = []
    for entry in lake.storage.list(prefix):
        if not entry.path.endswith(".json"):
            continue
        try:
            record = json.loads(lake.storage.read_bytes(entry.path))
        except (OSError, ValueError):
            continue  # an unreadable marker is no result to lose
        if not isinstance(record, dict) or record.get("checkpoint_fingerprint") != checkpoint_fp:
            continue
        if isinstance(record.get("lang"), str) and record["lang"] != pivot:
            langs.append(record["lang"])
    return sorted(langs)


def _stored_settings(lake: Lake, model: str, name: str, checkpoint_fp: str) -> dict | None:
    """The job settings (config_json of its runs row) that computed checkpoint_fp, when a runs row says."""
    import pyarrow.parquet as pq

    for entry in lake.storage.list(lake._partition("runs", model, name)):
        try:
            with lake.storage.open_input_file(entry.path) as src:
                configs = pq.read_table(src, columns=["config_json"]).column("config_json").to_pylist()
        except Exception:  # an unreadable runs file: lake check reports it
            continue
        for text in configs:
            try:
                config = json.loads(text)
            except (TypeError, ValueError):
                continue
            if isinstance(config, dict) and config.get("fingerprint") == checkpoint_fp:
                return config
    return None


def _refuse_replacing_pivot(
    job: JobConfig, checkpoint: Checkpoint, lake: Lake, stored_fp: str, languages: list[str], max_length: int | None
) -> None:
    """Recomputing the pivot with other settings makes every language scored against the stored one stale: refuse
    when some of them are not in this run (nothing would replace them), naming them, what differs, and the ways on."""
    model, name = job.model_name, checkpoint.name
    lost = [lang for lang in _dependents(lake, model, name, job.pivot, stored_fp) if lang not in languages]
    if not lost:
        return
    stored = _stored_settings(lake, model, name, stored_fp)
    now = {**job.fingerprint_settings(), "max_length": max_length}
    if stored is None:
        differs = "settings, weights or data differ"
    else:
        changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in now.items() if k in stored and stored.get(k) != v]
        if stored.get("pivot") != job.pivot:
            changed.append(f"pivot {stored.get('pivot')!r} -> {job.pivot!r}")
        differs = ", ".join(changed) if changed else "the weights or the data differ, the settings are the same"
    shown = ", ".join(lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
    raise NeuronxaError(
        f"{job.source}: {model} @ {name} would recompute its pivot {job.pivot!r} ({differs}) and so drop "
        f"{len(lost)} language(s) of lake {lake.uri} that this run does not compute ({shown}) out of every view; "
        "rerun with --force to replace them, or give this run another lake (--lake)"
    )


def plan_jobs(
    jobs: list[JobConfig],
    force: bool = False,
    recompute: list[str] | None = None,
    corpora: dict[int, ParallelCorpus] | None = None,
) -> list[CheckpointPlan]:
    """Every checkpoint of every job, planned; raises NeuronxaError before anything starts when an input is bad."""
    plans: list[CheckpointPlan] = []
    wanted = frozenset(recompute or ())
    seen: dict[tuple[str, str], str] = {}
    for i, job in enumerate(jobs):
        corpus = (corpora or {}).get(i) or job.load_corpus()
        unknown = sorted(wanted - set(corpus.languages))
        if isinstance(job.pivots, list) and set(job.pivots) - set(corpus.languages):
            raise NeuronxaError(
                f"{job.source}: pivots {sorted(set(job.pivots) - set(corpus.languages))} are not among the job's "
                f"languages {corpus.languages}"
            )
        if unknown:
            raise NeuronxaError(f"--recompute {unknown}: not languages of {job.source} (it has {corpus.languages})")
        lake = Lake(job.lake)
        checkpoints = job.resolved_checkpoints()
        if not checkpoints:
            raise NeuronxaError(f"{job.source}: no checkpoints found (checkpoints: {job.checkpoints})")
        for checkpoint in checkpoints:
            plan = plan_checkpoint(job, checkpoint, corpus, lake, force, wanted)
            if plan.key in seen and seen[plan.key] != job.source:
                raise NeuronxaError(
                    f"{job.source} and {seen[plan.key]} both write {plan.label}: give one of them another `name`"
                )
            seen[plan.key] = job.source
            plans.append(plan)
    return plans
