"""Interventions, the second phase of a run: once a checkpoint's baseline is in the lake, the neuron sets its job
asks for (LAPE's language-specific neurons of a language or of all, as the lake's language_specific_neurons view
selects them for that model and checkpoint; a random control set with the same count per layer; a user's file),
and one plan per set that evaluates the checkpoint again with those neurons switched off.

Each set is fingerprinted: when the baseline changes (more languages, new weights) the LAPE set changes, and so
does the variant's fingerprint, so the variant is recomputed; an unchanged set finds its variant complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

from neuronxa_ray.config.job import Intervention
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution.state import FailedUnit, first_line
from neuronxa_ray.planning.plan import CheckpointPlan, Variant, plan_checkpoint

log = logging.getLogger(__name__)


class Sets:
    """The lake's view of one checkpoint's baseline: model shape and LAPE neurons per language."""

    def __init__(self, con, plan: CheckpointPlan) -> None:
        self.plan = plan
        key = [plan.job.model_name, plan.checkpoint.name]
        shape = con.execute(
            "SELECT max(layer) + 1, max(neuron) + 1 FROM neuron_counts WHERE model = ? AND checkpoint = ?", key
        ).fetchone()
        if shape is None or shape[0] is None:
            raise NeuronxaError(f"{plan.label}: no neuron counts in the lake to choose neurons from")
        self.n_layers, self.d_ff = int(shape[0]), int(shape[1])
        rows = con.execute(
            "SELECT lang, layer, neuron FROM language_specific_neurons WHERE model = ? AND checkpoint = ?", key
        ).fetchall()
        self.lape: dict[str, list[tuple[int, int]]] = {}
        for lang, layer, neuron in rows:
            self.lape.setdefault(lang, []).append((int(layer), int(neuron)))

    def lape_pairs(self, of: str) -> list[tuple[int, int]]:
        if of == "all":
            return sorted({p for pairs in self.lape.values() for p in pairs})
        return self.lape.get(of, [])

    def neurons(self, item: Intervention):
        """The NeuronSet an intervention switches off at this checkpoint."""
        from neuronxa_ray.compute.interventions import NeuronSet

        if item.off == "lape":
            return NeuronSet.from_pairs(self.lape_pairs(item.of), self.n_layers, self.d_ff)
        if item.off == "random":
            like = NeuronSet.from_pairs(self.lape_pairs(item.like), self.n_layers, self.d_ff)
            return NeuronSet.random_like(like, self.d_ff, item.seed)
        return NeuronSet.from_pairs(read_pairs(item.path), self.n_layers, self.d_ff)


def read_pairs(path: str) -> list[tuple[int, int]]:
    """(layer, neuron) rows of a Parquet or CSV file (other columns are ignored)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        table = pcsv.read_csv(path) if Path(path).suffix.lower() in (".csv", ".tsv") else pq.read_table(path)
    except Exception as e:
        raise NeuronxaError(f"neuron file {path}: unreadable as Parquet or CSV: {first_line(e)}") from e
    missing = {"layer", "neuron"} - set(table.column_names)
    if missing:
        raise NeuronxaError(f"neuron file {path}: needs columns layer and neuron (has {table.column_names})")
    try:
        return [(int(a), int(b)) for a, b in zip(table["layer"].to_pylist(), table["neuron"].to_pylist())]
    except (TypeError, ValueError) as e:
        raise NeuronxaError(f"neuron file {path}: layer and neuron must be whole numbers ({first_line(e)})") from e


def plan_interventions(
    plans: list[CheckpointPlan], failed: list[FailedUnit], force: bool = False
) -> tuple[list[CheckpointPlan], list[FailedUnit]]:
    """For every checkpoint whose job has interventions and whose baseline completed, one plan per intervention;
    a checkpoint whose sets cannot be made (its baseline failed, a bad neuron file) fails its interventions."""
    from neuronxa_ray.lake import Lake
    from neuronxa_ray.query import connect

    broken = {(f.model, f.checkpoint) for f in failed}
    out: list[CheckpointPlan] = []
    errors: list[FailedUnit] = []
    connections: dict[str, object] = {}
    for plan in plans:
        if not plan.job.interventions:
            continue
        if plan.key in broken:
            for item in plan.job.interventions:
                errors.append(FailedUnit(*plan.key, f"(off {item.label})", 0, "the checkpoint's baseline failed"))
            continue
        try:
            lake = Lake(plan.job.lake)
            con = connections.get(lake.uri) or connections.setdefault(lake.uri, connect(lake))
            sets = Sets(con, plan)
        except Exception as e:
            for item in plan.job.interventions:
                errors.append(FailedUnit(*plan.key, f"(off {item.label})", 0, first_line(e)))
            continue
        for item in plan.job.interventions:
            try:
                neurons = sets.neurons(item)
                if neurons.size() == 0:
                    log.warning("%s: intervention %s switches no neuron off (the set is empty)", plan.label, item.label)
                variant = Variant(item, tuple(tuple(x.tolist()) for x in neurons.layers), neurons.fingerprint())
                out.append(plan_checkpoint(plan.job, plan.checkpoint, plan.corpus, lake, force, variant=variant))
            except Exception as e:
                errors.append(FailedUnit(*plan.key, f"(off {item.label})", 0, first_line(e)))
    return out, errors
