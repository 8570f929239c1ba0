"""Planning: jobs -> units of (model, checkpoint, language), minus what the lake verifiably holds. No Ray and no
torch; it resolves each model's source (a local stat, or one hub request) and reads the lake's markers.

A language counts as done only when its marker verifies and carries the current fingerprint, so new weights in
the same directory, another n_sentences or other data recompute the pivot and every language of that checkpoint:
never a mix of old and new under one score.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from neuronxa_ray.config.job import Checkpoint, Intervention, JobConfig
from neuronxa_ray.corpus.readers import ParallelCorpus
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake, is_complete
from neuronxa_ray.model.resolve import ResolvedModel, check_architecture, resolve_model
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.planning.fingerprints import checkpoint_fingerprint, language_fingerprint, variant_fingerprint
from neuronxa_ray.planning.pivot import refuse_replacing_pivot, resolve_pivots
from neuronxa_ray.planning.tables import required_tables, resolve_store_states

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A checkpoint evaluated again with neurons switched off (one `interventions:` entry), stored as a model of its
    own, `{model} [off {label}]`, so it is scheduled, retried, resumed and scored like any other."""

    intervention: Intervention
    neurons: tuple[tuple[int, ...], ...]  # per block (layer index), the neurons switched off
    fingerprint: str  # the set's: a changed set recomputes

    @property
    def n_neurons(self) -> int:
        return sum(len(layer) for layer in self.neurons)


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
    variant: Variant | None = None  # neurons switched off (job.model_name is then the variant's name)
    base_model: str = ""  # the model as the job names it

    @property
    def perplexity(self) -> bool:
        """Whether its languages' perplexity is measured too (every evaluation of a job with interventions)."""
        return bool(self.job.interventions)

    @property
    def intervention(self) -> str:
        return "none" if self.variant is None else self.variant.intervention.label

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.model_name, self.checkpoint.name)

    @property
    def pivot(self) -> str:
        return self.job.pivot

    @property
    def label(self) -> str:
        return f"{self.job.model_name} @ {self.checkpoint.name}"


def _done(
    lake: Lake, job: JobConfig, name: str, lang: str, fingerprint: str, pivot: dict | None, store_states: bool
) -> bool:
    """Complete, current, holding what the job asks for, and computed at its pivot's precision."""
    record = lake.completion(job.model_name, name, job.pivot, lang)
    return is_complete(record, fingerprint, required_tables(job, lang, store_states), (pivot or {}).get("precision"))


def plan_checkpoint(
    job: JobConfig,
    checkpoint: Checkpoint,
    corpus: ParallelCorpus,
    lake: Lake,
    force: bool = False,
    recompute: frozenset[str] = frozenset(),
    variant: Variant | None = None,
) -> CheckpointPlan:
    """Resolve the model (fails fast on a bad source), fingerprint it, and subtract what the lake holds. A variant
    is planned as the model `{model} [off {label}]` with a fingerprint that changes with its neuron set."""
    base_model = job.model_name
    if variant is not None:
        job = dataclasses.replace(job, name=variant.intervention.model_name(base_model))
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
    if variant is not None:
        fp = variant_fingerprint(fp, variant.intervention.label, variant.fingerprint)
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
        # a variant's set follows from its checkpoint's current results: a changed set replaces the old one
        if job.pivot in todo and stored_fp and stored_fp != fp and variant is None:
            refuse_replacing_pivot(job, checkpoint, lake, stored_fp, languages, max_length)
    # The other languages need the pivot's states: an actor reads them from the lake when they were stored, and
    # computes them (without writing them again) when they were not.
    return CheckpointPlan(
        job,
        checkpoint,
        spec,
        resolved,
        corpus,
        fp,
        languages,
        todo,
        max_length,
        lang_fps,
        store_states,
        variant,
        base_model,
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
        if job.pivots is not None:
            resolve_pivots(job.pivots, corpus.languages, f"{job.source}: ")
        if unknown:
            raise NeuronxaError(f"--recompute {unknown}: not languages of {job.source} (it has {corpus.languages})")
        for item in job.interventions:
            lang = item.switched_off
            if lang not in (None, "all") and lang not in corpus.languages:
                raise NeuronxaError(
                    f"{job.source}: intervention {item.label}: {lang!r} is not a language of the job "
                    f"({corpus.languages})"
                )
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
