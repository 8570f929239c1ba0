"""Submitting work to actors: what the policy picks becomes a Ray call with its task (token ids, fingerprints, the
pivot's states by reference), the checkpoint's spec and worker settings, and a prefetch hint for the actor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from neuronxa_ray.execution import policy
from neuronxa_ray.execution.actor import MAX_IN_FLIGHT
from neuronxa_ray.execution.pool import ActorPool
from neuronxa_ray.execution.state import Queues, Slot, Unit, now
from neuronxa_ray.lake import Lake
from neuronxa_ray.planning.plan import CheckpointPlan
from neuronxa_ray.worker.worker import LanguageTask, WorkerSettings


class Dispatcher:
    """Fills every live actor up to MAX_IN_FLIGHT calls with what the policy picks."""

    def __init__(
        self,
        pool: ActorPool,
        plans: list[CheckpointPlan],
        lakes: dict[int, Lake],
        q: Queues,
        tokens: dict[tuple[int, str], list[list[int]]],
        run_id: str,
    ) -> None:
        self.pool, self.plans, self.lakes, self.q, self.tokens, self.run_id = pool, plans, lakes, q, tokens, run_id
        self.states_refs: dict[int, Any] = {}  # plan -> the ref its pivot's states will be shared through
        self.pivot_tables: dict[int, set[str]] = {}  # plans whose pivot is complete in the lake: its tables
        for i, plan in enumerate(plans):
            if plan.pivot not in plan.todo:  # the pivot is complete: actors read its states or compute them
                q.pivot_ready[i] = None
                record = lakes[i].completion(*plan.key, plan.pivot, plan.pivot) or {}
                self.pivot_tables[i] = {f.get("table") for f in record.get("files") or []}

    def spec(self, pi: int):
        plan = self.plans[pi]
        return dataclasses.replace(plan.spec, gpus=plan.job.gpus_per_actor)

    def settings(self, pi: int) -> WorkerSettings:
        plan, job = self.plans[pi], self.plans[pi].job
        return WorkerSettings(
            self.lakes[pi],
            job.batch_size,
            plan.max_length,
            job.state_dtype,
            plan.store_states,
            job.store_similarity,
            job.batch_tokens,
        )

    def task(self, unit: Unit) -> LanguageTask:
        plan = self.plans[unit.plan]
        return LanguageTask(
            plan.job.model_name,
            plan.checkpoint.name,
            plan.pivot,
            unit.lang,
            plan.corpus.ids,
            plan.corpus.sentences[unit.lang],
            plan.lang_fingerprints[unit.lang],
            token_ids=self.tokens[(unit.plan, unit.lang)],
            checkpoint_fingerprint=plan.fingerprint,
            run_id=self.run_id,
            pivot_token_ids=None if unit.lang == plan.pivot else self.tokens.get((unit.plan, plan.pivot)),
            pivot_in_lake=unit.lang != plan.pivot and "sentence_states" in self.pivot_tables.get(unit.plan, ()),
            perplexity=plan.perplexity,
            neurons=None if plan.variant is None else plan.variant.neurons,
            base_model=plan.base_model or plan.job.model_name,
            intervention=plan.intervention,
            switched_off=None if plan.variant is None else plan.variant.intervention.switched_off,
        )

    def pivot_refs(self, pi: int) -> list:
        """The pivot's states for the checkpoint's other languages: a ref to what its actor returned (the data stays
        in the object store on that actor's node, never in the driver), or none: the actor reads them from the lake
        or computes them itself."""
        ref = self.q.pivot_ready.get(pi)
        return [] if ref is None else [ref]

    def fill(self, held: set[int]) -> None:
        self.q.held = held
        for slot in self.pool.alive():
            while len(slot.inflight) < MAX_IN_FLIGHT:
                choice = policy.pick(self.q, slot, self.pool.alive())
                if choice is None:
                    break
                kind, pi = choice
                if kind == "warm":
                    self.warm(slot, pi)
                    break
                self.submit(slot, pi)

    def warm(self, slot: Slot, pi: int) -> None:
        slot.inflight.append((slot.handle.warm.remote(pi, self.spec(pi), self.settings(pi)), "warm", None))
        self.switch(slot, pi)

    def submit(self, slot: Slot, pi: int) -> None:
        """The plan's next unit onto the actor; a pivot's states are shared when other actors will need them."""
        is_pivot = self.q.pending[pi][0].lang == self.plans[pi].pivot
        pivot_refs = [] if is_pivot else self.pivot_refs(pi)
        share = is_pivot and len(self.pool.alive()) > 1  # its states go where other actors can get them
        unit = self.q.pending[pi].popleft()
        self.q.started.add(pi)
        self.q.reserved.pop(pi, None)
        unit.attempts += 1
        unit.status, unit.started, unit.node, unit.result = "running", now(), slot.node, None
        nxt = policy.reserve_next(self.q, slot, is_pivot)
        hint = None if nxt is None else (nxt, self.spec(nxt), self.settings(nxt))
        refs = slot.handle.process.options(num_returns=2).remote(
            pi, self.spec(pi), self.settings(pi), self.task(unit), pivot_refs, hint, share
        )
        if is_pivot:
            self.states_refs[pi] = refs[1] if share else None
        slot.inflight.append((refs[0], "unit", unit))
        self.switch(slot, pi)

    def prewarm(self) -> None:
        """Queue the first checkpoints' model loads on the actors as they start, so the weights load while the
        driver loads the tokenizer and tokenizes (start-up overlapped rather than in sequence)."""
        for slot, pi in policy.first_loads(self.q, self.pool.slots):
            self.warm(slot, pi)
            self.q.started.add(pi)

    def switch(self, slot: Slot, pi: int) -> None:
        """The actor now serves plan pi: a load, unless it is another evaluation of the weights it holds."""
        if slot.loaded != pi:
            if slot.loaded is None or self.spec(slot.loaded) != self.spec(pi):
                slot.loads += 1
            slot.loaded = pi
