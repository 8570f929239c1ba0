"""Execution on Ray (the only module that imports Ray): a pool of long-lived actors pulls units of work.

A unit is one (model, checkpoint, language); planning.py decides which units a run needs. The scheduler here
only places them:
- an actor keeps its loaded checkpoint while units of it remain and prefers them; when its checkpoint runs out it
  takes a checkpoint no one has started (about one load per checkpoint: loads <= checkpoints + actors), and the
  next checkpoint's weights load into host memory while the current one computes (prefetch);
- a checkpoint's pivot runs first; its states go to every actor once, through the object store (owned by the
  driver, so they survive the node that computed them); units of other checkpoints run while one waits for its
  pivot; with fewer checkpoints than actors, a checkpoint's languages spread over the actors;
- a unit whose actor or node dies is retried on another actor (max_attempts), the dead actor is replaced when the
  cluster has room, and work in flight on healthy actors is kept; a unit that fails by itself (bad data, a model
  error) fails alone, and the run ends non-zero with a table of failed units; a rerun computes what is missing;
- a lake that stops answering (a write fails and a probe of the lake fails too) holds its units while it is probed
  with back-off; back within LAKE_OUTAGE_S, they are retried; else they fail with an error naming the lake, the run
  ends with its table of failed units, and a rerun completes the lake. Bookkeeping writes (runs, attempts) never end
  a run;
- actors that cannot be placed within placement_timeout_s give an error naming what was asked and what the
  cluster has; every attempt is a row in the lake's `attempts` table.

Why actors rather than Ray Data's map_batches: a language's per-neuron counters accumulate across its batches on
one device, and its cosine matrices against the pivot need all of its sentences and the pivot's states together
on that device; actors stream each language through one model so only summaries leave it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from neuronxa_ray import __version__
from neuronxa_ray.config.job import JobConfig
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import SCHEMA_VERSION, Lake
from neuronxa_ray.planning.plan import CheckpointPlan, plan_jobs
from neuronxa_ray.worker.worker import LanguageResult, LanguageTask, LanguageWorker, WorkerSettings, WriteOutcome

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # per actor: one running, one queued, so an actor never waits for the driver
ATTEMPTS_FLUSH_S = 30.0  # attempts rows reach the lake at least this often
LEASE_RENEW_S = 60.0  # heartbeat of this run's checkpoint leases (they go stale after 15 minutes without one)
LAKE_OUTAGE_S = 60.0  # a lake that answers no probe for this long fails the units that write to it
LAKE_PROBE_S = (1.0, 8.0)  # first and longest pause between probes of a lake that stopped answering


@dataclass
class RunOptions:
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    ray_address: str | None = None
    force: bool = False  # recompute everything the jobs name
    recompute: list[str] | None = None  # recompute these languages
    worker_factory: Any = None  # a LanguageWorker-like class: tests and benchmarks plant their own


@dataclass(frozen=True)
class FailedUnit:
    model: str
    checkpoint: str
    lang: str
    attempts: int
    error: str


@dataclass
class RunReport:
    run_id: str
    runs: list[dict[str, Any]]  # one row per checkpoint that computed something
    failed: list[FailedUnit]
    n_units: int  # units the run had to compute
    loads: int  # model loads over all actors
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------------------------------- the actor


class _Actor:
    """One loaded checkpoint at a time (plus, at most, the next one prefetched into host memory)."""

    def __init__(self, threads: int, factory: Any = None) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its bars would interleave with the driver's through Ray's log stream
        hf_logging.set_verbosity_error()
        torch.set_num_threads(max(1, threads))
        self.factory = factory or LanguageWorker
        self.worker = None
        self.key: int | None = None
        self.prefetched: dict[int, Future] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.loads = 0
        self.outbox: list[WriteOutcome] = []  # finished writes not yet reported (survives a call that raises)
        self._write_base = 0.0  # the worker's write seconds already reported

    def _take(self) -> list[WriteOutcome]:
        out, self.outbox = self.outbox, []
        return out

    def ready(self) -> dict:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"node": f"{socket.gethostname()}/{node[:8]}", "pid": os.getpid()}

    def warm(self, key: int, spec, settings: WorkerSettings) -> list[WriteOutcome]:
        """Load the checkpoint `key` (if it is not the loaded one); return the writes confirmed so far."""
        if key == self.key:
            return self._take()
        if self.worker is not None:
            self.outbox += self.worker.collect()
            self.worker.close()
        self.worker, self.key, self._write_base = None, None, 0.0
        future = self.prefetched.pop(key, None)
        self.prefetched.clear()  # a prefetch of another checkpoint is stale now
        prefetched = None
        if future is not None:
            try:
                prefetched = future.result()
            except Exception:  # loading again below raises the error where the unit sees it
                prefetched = None
        self.worker = self.factory(spec, settings, with_tokenizer=False, prefetched=prefetched)
        self.key = key
        self.loads += 1
        return self._take()

    def process(
        self, key: int, spec, settings, task: LanguageTask, pivot_refs: list, prefetch: tuple | None, share: bool
    ):
        import ray

        confirmed = self.warm(key, spec, settings)
        if prefetch is not None:
            self._prefetch(*prefetch)
        pivot = None
        if pivot_refs and not self.worker.has_pivot(task):  # the pivot's own actor keeps them on its device
            try:
                pivot = ray.get(pivot_refs[0])
            except ray.exceptions.RayError as e:  # lost with its node: the worker reads or computes them
                log.warning("%s: the pivot's shared states are gone (%s)", task.lang, _first_line(e))
        result, states = self.worker.process(task, pivot, share_pivot=share)
        result.confirmed = confirmed + self._take() + result.confirmed
        result.write_s, self._write_base = self.worker.write_s - self._write_base, self.worker.write_s
        return result, states

    def _prefetch(self, key: int, spec, settings) -> None:
        if key == self.key or self.prefetched or not hasattr(self.factory, "prefetch"):
            return
        self.prefetched[key] = self._loader.submit(self.factory.prefetch, spec, settings)

    def flush(self) -> list[WriteOutcome]:
        return self._take() + (self.worker.collect() if self.worker is not None else [])


# ---------------------------------------------------------------------------------------------------- the pool


@dataclass
class _Slot:
    """The driver's view of one actor."""

    id: int
    handle: Any
    node: str = ""
    key: int | None = None  # the checkpoint it has (or will have, after its queued units) loaded
    inflight: list = field(default_factory=list)  # (ref, kind, unit): kind "unit" | "warm" | "flush"
    unconfirmed: list = field(default_factory=list)  # units computed whose writes are not confirmed yet
    alive: bool = True
    loads: int = 0


class ActorPool:
    """Creates the actors, waits (up to a time limit) for them to be placed, and replaces dead ones."""

    def __init__(self, ray, size: int, options: dict, threads: int, factory: Any, timeout_s: float) -> None:
        self.ray = ray
        self.options = options
        self.threads = threads
        self.factory = factory
        self.timeout_s = timeout_s
        self.size = size
        self.slots: list[_Slot] = []
        self.placing: dict[Any, tuple[_Slot, float]] = {}  # ready ref -> (slot, deadline)
        self._cls = ray.remote(**options)(_Actor)

    def _new(self) -> tuple[_Slot, Any]:
        slot = _Slot(id=len(self.slots), handle=self._cls.remote(self.threads, self.factory))
        self.slots.append(slot)
        return slot, slot.handle.ready.remote()

    def launch(self) -> None:
        """Ask for the actors without waiting: calls queued on them run once each is placed and started."""
        self._starting = {}
        for _ in range(self.size):
            slot, ref = self._new()
            self._starting[ref] = slot

    def wait_placed(self) -> None:
        """Wait up to the time limit for every actor; an error naming what was asked and what the cluster has."""
        refs = self._starting
        ready, waiting = self.ray.wait(list(refs), num_returns=len(refs), timeout=self.timeout_s)
        if waiting:
            self.shutdown()
            raise NeuronxaError(self.describe_shortfall(len(ready)))
        for ref in ready:
            refs[ref].node = self.ray.get(ref)["node"]

    def start(self) -> None:
        self.launch()
        self.wait_placed()

    def replace(self, dead: _Slot) -> None:
        slot, ref = self._new()
        self.placing[ref] = (slot, time.monotonic() + self.timeout_s)
        log.warning("actor %d lost (node %s); starting a replacement", dead.id, dead.node or "?")

    def placed(self, ref) -> _Slot | None:
        slot, _ = self.placing.pop(ref)
        try:
            slot.node = self.ray.get(ref)["node"]
            return slot
        except Exception as e:
            log.warning("a replacement actor could not start: %s", str(e).splitlines()[0])
            slot.alive = False
            return None

    def expire(self) -> None:
        now = time.monotonic()
        for ref, (slot, deadline) in list(self.placing.items()):
            if now > deadline:
                del self.placing[ref]
                slot.alive = False
                self.ray.kill(slot.handle)
                log.warning(
                    "no room for a replacement actor within %.0fs; going on with %d actor(s)",
                    self.timeout_s,
                    len(self.alive()),
                )

    def alive(self) -> list[_Slot]:
        return [s for s in self.slots if s.alive and s.node]

    def describe_shortfall(self, placed: int) -> str:
        asked = {k: v for k, v in (("CPU", self.options.get("num_cpus")), ("GPU", self.options.get("num_gpus"))) if v}
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        shown, fit = [], 0
        for n in nodes:
            res = n.get("Resources", {})
            shown.append(f"{n.get('NodeManagerAddress', '?')} (CPU {res.get('CPU', 0):g}, GPU {res.get('GPU', 0):g})")
            fit += int(min(res.get(k, 0) // v for k, v in asked.items())) if asked else 0
        return (
            f"could not place {self.size} actor(s) of {asked} within {self.timeout_s:g}s ({placed} placed): "
            f"the cluster has {len(nodes)} node(s): {'; '.join(shown)}; at most {fit} such actor(s) fit. "
            "Set num_actors (or --num-actors) lower, gpus_per_actor, or placement_timeout_s for nodes still starting"
        )

    def shutdown(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(slot.handle)


# ------------------------------------------------------------------------------------------------ the scheduler


@dataclass
class _Unit:
    plan: int
    lang: str
    attempts: int = 0
    status: str = "pending"  # pending | running | written | done | failed
    error: str | None = None
    started: dt.datetime | None = None
    node: str = ""
    result: LanguageResult | None = None


@dataclass
class _Outage:
    """A lake that stopped answering: its units wait (not placed) while it is probed with back-off."""

    since: float
    next_probe: float
    delay: float
    cause: str
    given_up: bool = False


def _first_line(e: BaseException) -> str:
    """The first line of an error's message (of the original error, for one raised inside an actor)."""
    cause = getattr(e, "cause", None) or e
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return (lines[0] if lines else type(cause).__name__)[:300]


class Scheduler:
    """Places units on the pool's actors until every unit is done or failed (see the module docstring)."""

    def __init__(
        self,
        ray,
        pool: ActorPool,
        plans: list[CheckpointPlan],
        tokens: dict[tuple[int, str], list[list[int]]],
        run_id: str,
        progress: bool | None,
    ) -> None:
        self.ray, self.pool, self.plans, self.tokens, self.run_id = ray, pool, plans, tokens, run_id
        self.units = [_Unit(i, lang) for i, plan in enumerate(plans) for lang in plan.todo]
        self.pending: dict[int, deque[_Unit]] = {i: deque() for i in range(len(plans))}
        for unit in self.units:
            self.pending[unit.plan].append(unit)
        self.started: set[int] = set()  # plans with a unit submitted
        self.reserved: dict[int, int] = {}  # fresh plan -> the slot that will take it next (prefetching it)
        self.pivot_ref: dict[int, Any] = {}
        self.states_refs: dict[int, Any] = {}
        by_root: dict[str, Lake] = {}
        self.lakes = {i: by_root.setdefault(p.job.lake, Lake(p.job.lake)) for i, p in enumerate(plans)}
        self.leases: list = []  # one per (model, checkpoint): a concurrent run with other settings is refused
        self._last_renew = time.monotonic()
        self.attempt_rows: dict[str, list[dict]] = {}
        self.attempt_parts: dict[str, int] = {}
        self._attempt_lakes: dict[str, Lake] = {}
        self._last_attempts_flush = time.monotonic()
        self.outages: dict[str, _Outage] = {}  # lake uri -> its outage
        self.bar = _progress(len(self.units), progress)
        self.finished = 0
        self.pivot_records: dict[int, dict] = {}  # plans whose pivot is complete in the lake: its marker, in short
        for i, plan in enumerate(plans):
            if plan.pivot not in plan.todo:  # the pivot is complete: actors read its states or compute them
                self.pivot_ref[i] = None
                record = self.lakes[i].completion(*plan.key, plan.pivot, plan.pivot) or {}
                self.pivot_records[i] = {"tables": {f.get("table") for f in record.get("files") or []}}

    # ----- picking work
    def _held(self, pi: int) -> bool:
        return self.lakes[pi].uri in self.outages

    def _ready(self, pi: int) -> bool:
        queue = self.pending[pi]
        if not queue or self._held(pi):
            return False
        return queue[0].lang == self.plans[pi].pivot or pi in self.pivot_ref

    def _serving(self, pi: int) -> int:
        return sum(1 for s in self.pool.alive() if s.key == pi)

    def _fresh(self, pi: int) -> bool:
        return pi not in self.started and bool(self.pending[pi]) and not self._held(pi)

    def _pick(self, slot: _Slot) -> tuple[str, int] | None:
        """('unit', plan) to submit the next unit of plan, ('warm', plan) to load it while its pivot runs."""
        if slot.key is not None and self._ready(slot.key):
            return ("unit", slot.key)
        if slot.key is not None and self.pending[slot.key] and slot.inflight:
            return None  # its checkpoint still has work (waiting for the pivot it computes): stay with it
        fresh = [pi for pi in self.pending if self._fresh(pi) and self.reserved.get(pi, slot.id) == slot.id]
        fresh.sort(key=lambda pi: self.reserved.get(pi) != slot.id)  # the one it prefetched first
        if fresh:
            return ("unit", fresh[0])
        helpable = [pi for pi in self.pending if self._ready(pi) and pi != slot.key]
        if helpable:  # the checkpoint with the most work per actor already on it
            return ("unit", max(helpable, key=lambda pi: len(self.pending[pi]) / (1 + self._serving(pi))))
        if slot.inflight:
            return None
        waiting = [pi for pi in self.pending if self.pending[pi] and pi != slot.key and pi in self.started]
        waiting = [pi for pi in waiting if len(self.pending[pi]) > self._serving(pi) and not self._held(pi)]
        if waiting:
            return ("warm", max(waiting, key=lambda pi: len(self.pending[pi])))
        return None

    def _prefetch_hint(self, slot: _Slot, pi: int, is_pivot: bool) -> tuple | None:
        """Once its checkpoint's pivot is done, reserve the next fresh checkpoint for this actor, whose weights then
        load into host memory behind the checkpoint's remaining languages (one reservation per actor)."""
        if is_pivot or slot.id in self.reserved.values():
            return None
        for qi in self.pending:
            if self._fresh(qi) and qi not in self.reserved:
                self.reserved[qi] = slot.id
                return (qi, self._spec(qi), self._settings(qi))
        return None

    def _spec(self, pi: int):
        plan = self.plans[pi]
        return dataclasses.replace(plan.spec, gpus=plan.job.gpus_per_actor)

    def _settings(self, pi: int) -> WorkerSettings:
        plan = self.plans[pi]
        job = plan.job
        return WorkerSettings(
            self.lakes[pi],
            job.batch_size,
            plan.max_length,
            job.state_dtype,
            plan.store_states,
            job.store_similarity,
            job.batch_tokens,
        )

    def _pivot_refs(self, pi: int) -> list:
        """The pivot's states for the checkpoint's other languages: a ref to what its actor returned (the data stays
        in the object store on that actor's node, never in the driver), or none: the actor reads them from the lake
        or computes them itself."""
        ref = self.pivot_ref.get(pi)
        return [] if ref is None else [ref]

    def _task(self, unit: _Unit) -> LanguageTask:
        plan = self.plans[unit.plan]
        pivot_record = self.pivot_records.get(unit.plan) or {}
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
            pivot_in_lake=unit.lang != plan.pivot and "sentence_states" in pivot_record.get("tables", ()),
        )

    def _fill(self) -> None:
        for slot in self.pool.alive():
            while len(slot.inflight) < MAX_IN_FLIGHT:
                choice = self._pick(slot)
                if choice is None:
                    break
                kind, pi = choice
                if kind == "warm":
                    ref = slot.handle.warm.remote(pi, self._spec(pi), self._settings(pi))
                    slot.inflight.append((ref, "warm", None))
                    self._switch(slot, pi)
                    break
                is_pivot = self.pending[pi][0].lang == self.plans[pi].pivot
                pivot_refs = [] if is_pivot else self._pivot_refs(pi)
                share = is_pivot and len(self.pool.alive()) > 1  # its states go where other actors can get them
                unit = self.pending[pi].popleft()
                self.started.add(pi)
                self.reserved.pop(pi, None)
                unit.attempts += 1
                unit.status, unit.started, unit.node, unit.result = "running", _now(), slot.node, None
                refs = slot.handle.process.options(num_returns=2).remote(
                    pi,
                    self._spec(pi),
                    self._settings(pi),
                    self._task(unit),
                    pivot_refs,
                    self._prefetch_hint(slot, pi, is_pivot),
                    share,
                )
                if is_pivot:
                    self.states_refs[pi] = refs[1] if share else None
                slot.inflight.append((refs[0], "unit", unit))
                self._switch(slot, pi)

    def prewarm(self) -> None:
        """Queue the first checkpoints' model loads on the actors as they start, so the weights load while the
        driver loads the tokenizer and tokenizes (start-up overlapped rather than in sequence)."""
        fresh = [pi for pi in self.pending if self._fresh(pi)]
        for slot, pi in zip(self.pool.slots, fresh):
            slot.inflight.append((slot.handle.warm.remote(pi, self._spec(pi), self._settings(pi)), "warm", None))
            self.started.add(pi)
            self._switch(slot, pi)

    def _switch(self, slot: _Slot, pi: int) -> None:
        if slot.key != pi:
            slot.key = pi
            slot.loads += 1

    # ----- events
    def acquire_leases(self) -> None:
        """Claim every checkpoint this run writes; raises (releasing what it took) if another run with other
        settings is writing one of them."""
        for pi, plan in enumerate(self.plans):
            try:
                self.leases.append(self.lakes[pi].acquire(*plan.key, plan.fingerprint, self.run_id))
                self.lakes[pi].tidy(*plan.key, self.run_id)  # what killed runs left behind in this checkpoint
            except Exception:
                self.release_leases()
                raise

    def _renew_leases(self) -> None:
        if time.monotonic() - self._last_renew > LEASE_RENEW_S:
            self._last_renew = time.monotonic()
            for lease in self.leases:
                if lease.lake.uri in self.outages:
                    continue
                try:
                    lease.renew()
                except Exception as e:  # a lease stays valid for 15 minutes: the next heartbeat may get through
                    log.warning("could not renew the lease %s: %s", lease.path, str(e).splitlines()[0])

    def release_leases(self) -> None:
        for lease in self.leases:
            if lease.lake.uri in self.outages:  # not waiting for a lake that does not answer: it goes stale
                continue
            with contextlib.suppress(Exception):  # a lease left behind goes stale and is taken over
                lease.release()
        self.leases = []

    def run(self) -> None:
        try:
            while not self._all_settled():
                self._fill()
                self._flush_idle()
                refs = [ref for slot in self.pool.alive() for ref, _, _ in slot.inflight] + list(self.pool.placing)
                if not refs and self._waiting_for_lakes():
                    continue
                if not refs:
                    self._stalled()
                    break
                done, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
                for ref in done:
                    self._handle(ref)
                self.pool.expire()
                self._probe_lakes()
                self._flush_attempts(force=False)
                self._renew_leases()
        finally:
            self.bar.close()
            self._flush_attempts(force=True)

    def _all_settled(self) -> bool:
        return all(u.status in ("done", "failed") for u in self.units)

    def _stalled(self) -> None:
        """Nothing in flight and nothing placeable: fail what remains rather than wait forever."""
        why = (
            "no actor left to run it (actors lost and no room for replacements)"
            if not self.pool.alive()
            else "nothing could run it (a scheduler bug; please report: " + self._debug_state() + ")"
        )
        for unit in self.units:
            if unit.status not in ("done", "failed"):
                self._fail(unit, why)

    def _debug_state(self) -> str:
        units = [(self.plans[u.plan].checkpoint.name, u.lang, u.status, u.attempts) for u in self.units]
        slots = [(s.id, s.alive, s.node, s.key, len(s.inflight), len(s.unconfirmed)) for s in self.pool.slots]
        pending = {pi: [u.lang for u in q] for pi, q in self.pending.items() if q}
        return f"units={units} slots={slots} pending={pending} pivots={sorted(self.pivot_ref)}"

    def _flush_idle(self) -> None:
        """Actors with nothing left to do confirm their last writes."""
        for slot in self.pool.alive():
            if slot.unconfirmed and not slot.inflight:
                slot.inflight.append((slot.handle.flush.remote(), "flush", None))

    def _handle(self, ref) -> None:
        if ref in self.pool.placing:
            self.pool.placed(ref)
            return
        slot, entry = next((s, e) for s in self.pool.slots for e in s.inflight if e[0] == ref)
        slot.inflight.remove(entry)
        _, kind, unit = entry
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            transient = isinstance(getattr(e, "cause", None), self.ray.exceptions.RayError)
            if kind == "unit" and transient:  # e.g. the pivot's states lost with a node: not the unit's fault
                self._retry_or_fail(unit, _first_line(e), "lost")
            elif kind == "unit":
                self._unit_error(unit, _first_line(e))
            elif kind == "warm":
                slot.key = None  # the units will meet the error and fail with it
            else:
                self._actor_lost(slot, _first_line(e))
            return
        except Exception as e:  # the actor or its node is gone (RayActorError, ObjectLostError, ...)
            self._actor_lost(slot, f"{type(e).__name__}: {_first_line(e)}", also=[unit] if unit else [])
            return
        if kind == "unit":
            result: LanguageResult = value
            self._confirm(slot, result.confirmed)
            unit.status, unit.result = "written", result
            slot.unconfirmed.append(unit)
            if unit.lang == self.plans[unit.plan].pivot:  # its languages may run now, here and on other actors
                self.pivot_ref[unit.plan] = self.states_refs.pop(unit.plan, None)
            self.finished += 1
            self.bar.set_postfix_str(f"{unit.lang} @ {self.plans[unit.plan].checkpoint.name}", refresh=False)
            if not self.bar.disable:
                return
            log.info(
                "[%d/%d] %s %s: %d sentences, %d tokens in %.1fs on %s (attempt %d)",
                self.finished,
                len(self.units),
                self.plans[unit.plan].label,
                unit.lang,
                result.n_sentences,
                result.n_tokens,
                result.extract_s,
                slot.node,
                unit.attempts,
            )
        else:
            self._confirm(slot, value)
            if kind == "flush":  # anything still unconfirmed after a flush was never written: check the lake
                unconfirmed, slot.unconfirmed = slot.unconfirmed, []
                for unit in unconfirmed:
                    self._in_lake_or_retry(unit, "its write was never confirmed")

    def _confirm(self, slot: _Slot, outcomes: list[WriteOutcome]) -> None:
        for outcome in outcomes:
            unit = next(
                (
                    u
                    for u in slot.unconfirmed
                    if u.lang == outcome.lang and self.plans[u.plan].key == (outcome.model_name, outcome.checkpoint)
                ),
                None,
            )
            if unit is None:
                continue
            slot.unconfirmed.remove(unit)
            if outcome.error:
                self._write_failed(unit, outcome)
            else:
                self._done(unit, outcome.finished_at)
        self._release_finished_plans()

    def _done(self, unit: _Unit, finished_at: float | None = None) -> None:
        unit.status = "done"
        self._attempt_row(unit, "ok", None, finished_at=finished_at)
        self.bar.update(1)

    def _unit_error(self, unit: _Unit, message: str) -> None:
        """The unit's own error (bad data, a model error): it fails alone, and a failed pivot fails its checkpoint."""
        self._attempt_row(unit, "failed", message)
        self._fail(unit, message, record=False)
        self._fail_waiting_on_pivot(unit)

    def _fail_waiting_on_pivot(self, unit: _Unit) -> None:
        """A pivot that failed for good takes its checkpoint's waiting languages with it."""
        plan = self.plans[unit.plan]
        if unit.lang != plan.pivot or unit.plan in self.pivot_ref:
            return
        while self.pending[unit.plan]:
            other = self.pending[unit.plan].popleft()
            self._fail(other, f"the pivot {plan.pivot!r} failed: {unit.error}")

    def _actor_lost(self, slot: _Slot, reason: str, also: list[_Unit] = ()) -> None:
        """Requeue every unit the actor held (running, queued, or computed but not confirmed written)."""
        if not slot.alive:
            return
        slot.alive = False
        lost = [*also, *(u for _, kind, u in slot.inflight if kind == "unit"), *slot.unconfirmed]
        slot.inflight, slot.unconfirmed = [], []
        for unit in lost:
            self._in_lake_or_retry(unit, f"actor lost: {reason}")
        for pi, key_slot in list(self.reserved.items()):
            if key_slot == slot.id:
                del self.reserved[pi]
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(slot.handle)
        if any(u.status == "pending" for u in self.units):
            self.pool.replace(slot)
        self._release_finished_plans()

    def _in_lake_or_retry(self, unit: _Unit, message: str) -> None:
        """A unit whose fate is unknown: done if its files and marker made it to the lake, else tried again."""
        plan = self.plans[unit.plan]
        try:
            in_lake = self.lakes[unit.plan].is_done(*plan.key, plan.pivot, unit.lang, plan.lang_fingerprints[unit.lang])
        except Exception:  # the lake does not answer: not known to be there
            in_lake = False
        if in_lake:
            self._done(unit)
        else:
            self._retry_or_fail(unit, message, "lost")

    # ----- a lake that stops answering
    def _write_failed(self, unit: _Unit, outcome: WriteOutcome) -> None:
        """A write that failed: a lake that does not answer a probe either holds its units (see _probe_lakes)."""
        lake = self.lakes[unit.plan]
        message = f"writing to the lake failed: {outcome.error}"
        outage = self.outages.get(lake.uri)
        if outage is None:
            cause = _probe(lake)
            if cause is not None:
                now = time.monotonic()
                outage = self.outages[lake.uri] = _Outage(now, now + LAKE_PROBE_S[0], LAKE_PROBE_S[0], cause)
                log.warning("%s; its units wait up to %.0fs for it to answer again", cause, LAKE_OUTAGE_S)
        self._retry_or_fail(unit, message, "failed", finished_at=outcome.finished_at)

    def _probe_lakes(self) -> None:
        """Probe each lake that stopped answering when its pause is over: back, its units run again; silent past
        LAKE_OUTAGE_S, its waiting units fail (those still in flight fail as their writes do)."""
        now = time.monotonic()
        for uri, outage in list(self.outages.items()):
            if outage.given_up or now < outage.next_probe:
                continue
            lake = next(lake for lake in self.lakes.values() if lake.uri == uri)
            cause = _probe(lake)
            now = time.monotonic()
            if cause is None:
                log.warning("lake %s answers again after %.0fs; its units go on", uri, now - outage.since)
                del self.outages[uri]
            elif now - outage.since >= LAKE_OUTAGE_S:
                outage.given_up, outage.cause = True, cause
                for pi, queue in self.pending.items():
                    while self.lakes[pi].uri == uri and queue:
                        self._fail(queue.popleft(), _outage_error(outage))
            else:
                outage.delay = min(outage.delay * 2, LAKE_PROBE_S[1])
                outage.next_probe, outage.cause = now + outage.delay, cause

    def answers(self, lake: Lake, probe: bool = True) -> bool:
        """Whether bookkeeping should write to the lake: no outage known, or (probe) it answers again."""
        if lake.uri not in self.outages:
            return True
        if probe and _probe(lake) is None:
            del self.outages[lake.uri]
            return True
        return False

    def _waiting_for_lakes(self) -> bool:
        """Nothing in flight while units wait for a lake: pause until its next probe (True), rather than stall."""
        waiting = [o.next_probe for o in self.outages.values() if not o.given_up]
        if not waiting:
            return False
        time.sleep(max(0.0, min(1.0, min(waiting) - time.monotonic())))
        self._probe_lakes()
        return True

    def _retry_or_fail(self, unit: _Unit, message: str, status: str, finished_at: float | None = None) -> None:
        self._attempt_row(unit, status, message, finished_at=finished_at)
        outage = self.outages.get(self.lakes[unit.plan].uri)
        if outage is not None and outage.given_up:  # no retry on a lake given up on
            self._fail(unit, _outage_error(outage), record=False)
            return
        max_attempts = self.plans[unit.plan].job.max_attempts
        if unit.attempts >= max_attempts:
            self._fail(unit, f"{message} ({unit.attempts} attempts)", record=False)
            self._fail_waiting_on_pivot(unit)
            return
        log.warning("%s %s: %s; retrying", self.plans[unit.plan].label, unit.lang, message)
        unit.status = "pending"
        self.pending[unit.plan].appendleft(unit)
        pivot = self.plans[unit.plan].pivot
        if unit.lang != pivot:  # keep the pivot at the head of its queue
            queue = self.pending[unit.plan]
            piv = [u for u in queue if u.lang == pivot]
            for u in piv:
                queue.remove(u)
                queue.appendleft(u)

    def _fail(self, unit: _Unit, message: str, record: bool = True) -> None:
        if record:
            self._attempt_row(unit, "failed", message, finished_only=unit.started is None)
        unit.status, unit.error = "failed", message
        self.bar.update(1)

    def _release_finished_plans(self) -> None:
        """A checkpoint whose units are all settled no longer needs its pivot's states in the object store."""
        for pi in list(self.pivot_ref):
            if all(u.status in ("done", "failed") for u in self.units if u.plan == pi):
                del self.pivot_ref[pi]

    # ----- attempts
    def _attempt_row(
        self, unit: _Unit, status: str, error: str | None, finished_only: bool = False, finished_at: float | None = None
    ) -> None:
        """One try of a unit. With the worker's own clock when it reported one: started_at when its extraction began,
        extracted_at when its forward passes ended, finished_at when its write ended; else the driver's."""
        plan = self.plans[unit.plan]
        now = _now()
        result = unit.result  # this attempt's, once it computed (reset when the unit is submitted)
        started = _utc(getattr(result, "started_at", None)) if result is not None else None
        row = {
            "run_id": self.run_id,
            "model": plan.job.model_name,
            "checkpoint": plan.checkpoint.name,
            "lang": unit.lang,
            "attempt": max(unit.attempts, 1),
            "node": unit.node or None,
            "device": unit.result.device if unit.result else None,
            "started_at": now if finished_only else (started or unit.started or now),
            "extracted_at": _utc(getattr(result, "extracted_at", None)) if result is not None else None,
            "finished_at": _utc(finished_at) or now,
            "status": status,
            "error": error,
        }
        self.attempt_rows.setdefault(self.lakes[unit.plan].uri, []).append(row)
        self._attempt_lakes[self.lakes[unit.plan].uri] = self.lakes[unit.plan]

    def _flush_attempts(self, force: bool) -> None:
        if not force and time.monotonic() - self._last_attempts_flush < ATTEMPTS_FLUSH_S:
            return
        self._last_attempts_flush = time.monotonic()
        for uri, rows in self.attempt_rows.items():
            if rows and not self.answers(self._attempt_lakes[uri], probe=force):
                if force:
                    log.warning("%d attempts row(s) of this run not recorded: lake %s does not answer", len(rows), uri)
                continue
            if rows:
                part = self.attempt_parts.get(uri, 0)
                try:
                    self._attempt_lakes[uri].write_attempts(self.run_id, part, rows)
                except Exception as e:  # bookkeeping must not end a run
                    log.warning("could not write attempts to %s: %s", uri, e)
                    continue
                self.attempt_parts[uri] = part + 1
                self.attempt_rows[uri] = []

    def failed_units(self) -> list[FailedUnit]:
        return [
            FailedUnit(*self.plans[u.plan].key, u.lang, u.attempts, u.error or "")
            for u in self.units
            if u.status == "failed"
        ]


# ---------------------------------------------------------------------------------------------------- driving


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(epoch_s: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc) if epoch_s else None


def _probe(lake: Lake) -> str | None:
    """None when the lake takes a write (seconds at most), else one line naming it and the cause."""
    try:
        lake.storage.check_writable()  # a probe file written and deleted: no listing of the lake
        return None
    except Exception as e:
        return _first_line(e)


def _outage_error(outage: _Outage) -> str:
    return f"the lake stopped answering for {LAKE_OUTAGE_S:.0f}s ({outage.cause})"


def _progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, unit="lang", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _code_version() -> str:
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(__file__),
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


class _RayAuthNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on by default (once per process is plenty: never)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def _init_ray(address: str | None):
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS (or an address given) joins a cluster; otherwise a Ray of our own, even where another one
        # runs on this machine (ray.init() would silently join a `ray start` cluster found there).
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {}
        if address == "local":
            # A local Ray we start ourselves: the actors do the work, so they should not run at a lower priority
            # (Ray's default worker niceness is 15) than Ray's own housekeeping processes on a busy machine.
            kwargs["_system_config"] = {"worker_niceness": 0}
            # Ray enables token authentication for a new local cluster and says so on every start: a notice, not
            # news, in every run's output (RAY_AUTH_MODE still decides; its other messages pass).
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_RayAuthNotice())
        import signal
        import threading

        main_thread = threading.current_thread() is threading.main_thread()
        on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=False,
            **kwargs,
        )
        if callable(on_sigterm):  # ray.init sets a SIGTERM handler (sys.exit); the command's own one stays
            signal.signal(signal.SIGTERM, on_sigterm)
    return ray


def _check_local_devices(jobs: list[JobConfig], options: RunOptions) -> None:
    """A CUDA device asked for on a machine without one fails before Ray starts (a cluster is checked on joining)."""
    import ray

    if options.ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    wanted = [job for job in jobs if job.device.startswith("cuda")]
    if wanted:
        import torch

        if not torch.cuda.is_available():
            raise NeuronxaError(
                f"{wanted[0].source}: device {wanted[0].device!r} asked for, but this machine has no CUDA GPU "
                "(set device: cpu or auto, or RAY_ADDRESS to a cluster with GPUs)"
            )


def _pool_shape(ray, job: JobConfig) -> tuple[int, dict[str, float], int]:
    """(actors, ray options of each, torch threads of each): one per gpus_per_actor GPUs, else CPU actors."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if job.device.startswith("cuda") and not gpus:
        raise NeuronxaError(
            f"{job.source}: device {job.device!r} asked for, but the Ray cluster has no GPU "
            f"(resources: {dict(sorted(resources.items()))})"
        )
    if gpus and job.device != "cpu":
        n = job.num_actors or max(1, gpus // job.gpus_per_actor)
        return n, {"num_gpus": job.gpus_per_actor, "num_cpus": 1}, 1
    n = job.num_actors or 1
    node_cpus = [int(x.get("Resources", {}).get("CPU", 0)) for x in ray.nodes() if x.get("Alive")]
    cpus = max(1, min(max(node_cpus or [1]), int(resources.get("CPU", 1)) // n))
    return n, {"num_gpus": 0, "num_cpus": cpus}, cpus


def _tokenize_all(plans: list[CheckpointPlan], first_tokenizer: Future | None) -> dict[tuple[int, str], list]:
    """Token ids of every unit, in the driver (CPU work off the accelerators); one tokenizer per distinct source."""
    from neuronxa_ray.model.load import load_tokenizer, tokenize

    tokenizers: dict[str, Any] = {}
    by_text: dict[tuple[str, str, int | None], list] = {}
    out = {}
    for i, plan in enumerate(plans):
        key = f"{plan.resolved.source}|{plan.resolved.identity.get('commit', '')}|{plan.resolved.gguf_file}"
        if key not in tokenizers:
            if first_tokenizer is not None:
                tokenizers[key], first_tokenizer = first_tokenizer.result(), None
            else:
                tokenizers[key] = load_tokenizer(plan.spec)
        for lang in dict.fromkeys([plan.pivot, *plan.todo]):  # the pivot's ids too: an actor may compute it
            cache_key = (key, lang, plan.max_length)
            if cache_key not in by_text:
                by_text[cache_key] = tokenize(
                    tokenizers[key], plan.corpus.sentences[lang], plan.max_length, f"{plan.label} {lang}"
                )
            out[(i, lang)] = by_text[cache_key]
    return out


def run_jobs(jobs: list[JobConfig], options: RunOptions | None = None) -> RunReport:
    """Plan every job, run what is missing on one actor pool, record runs and attempts. Raises NeuronxaError
    before Ray starts (or any model loads) when an input is bad."""
    options = options or RunOptions()
    t_start = time.perf_counter()
    started = _now()
    run_id = f"{started.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    _check_local_devices(jobs, options)
    for job in jobs:
        Lake(job.lake).check_writable()
    all_plans = plan_jobs(jobs, options.force, options.recompute)
    plans = [p for p in all_plans if p.todo]
    _tidy_finished(all_plans, run_id)
    if not plans:
        log.debug("every language of every checkpoint is already in the lake; nothing to do")  # the CLI says it
        _compute_pairs(all_plans)
        return RunReport(run_id, [], [], 0, 0, time.perf_counter() - t_start)
    for job in {id(p.job): p.job for p in plans}.values():
        if job.trust_remote_code:
            log.warning("%s: trust_remote_code is true: Python code from the model directory will run", job.source)

    from neuronxa_ray.model.gguf import materialize_gguf, needs_conversion
    from neuronxa_ray.model.load import load_tokenizer
    from neuronxa_ray.model.resolve import resolve_source

    for plan in plans:
        if needs_conversion(plan.spec):  # once, here, rather than in every actor at the same time
            log.warning("first use of %s: de-quantising the GGUF once (a minute or two)", plan.spec.model)
            materialize_gguf(*resolve_source(plan.spec))
    # The first tokenizer loads (seconds, for large vocabularies) while Ray starts and the actors are placed.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
    first_tokenizer = loader.submit(load_tokenizer, plans[0].spec)
    loader.shutdown(wait=False)
    ray = _init_ray(options.ray_address)
    size, ray_options, threads = _pool_shape(ray, plans[0].job)
    for plan in plans[1:]:  # one pool serves every job: their actors must be alike
        if _pool_shape(ray, plan.job)[1:] != (ray_options, threads):
            raise NeuronxaError(
                f"{plan.job.source} needs other actors than {plans[0].job.source} (device, gpus_per_actor or "
                "num_actors differ): run them separately"
            )
    size = min(size, sum(len(p.todo) for p in plans))
    pool = ActorPool(
        ray, size, ray_options, threads, options.worker_factory, min(p.job.placement_timeout_s for p in plans)
    )
    scheduler = Scheduler(ray, pool, plans, {}, run_id, options.progress)
    scheduler.acquire_leases()
    try:
        pool.launch()
        scheduler.prewarm()
        scheduler.tokens = _tokenize_all(plans, first_tokenizer)
        pool.wait_placed()
        startup_s = time.perf_counter() - t_start
        log.info("%d actor(s) placed in %.1fs; %d unit(s) to run", size, startup_s, sum(len(p.todo) for p in plans))
        scheduler.run()
        loads = sum(s.loads for s in pool.slots)
    finally:
        pool.shutdown()
        scheduler.release_leases()
    wall_s = time.perf_counter() - t_start
    runs = []
    for i, plan in enumerate(plans):
        done = [u for u in scheduler.units if u.plan == i and u.status == "done" and u.result is not None]
        if done:
            row = _runs_row(plan, run_id, [u.result for u in done], started, size, startup_s, wall_s)
            try:
                if not scheduler.answers(scheduler.lakes[i]):
                    raise NeuronxaError(f"lake {plan.job.lake} does not answer")
                Lake(plan.job.lake).write_run(row)
            except Exception as e:  # bookkeeping must not end a run: its languages are in the lake
                log.warning("%s: could not write the runs row: %s", plan.label, _first_line(e))
            runs.append(row)
    failed = scheduler.failed_units()
    failed += _compute_pairs(all_plans, failed)
    return RunReport(run_id, runs, failed, len(scheduler.units), loads, time.perf_counter() - t_start)


def _tidy_finished(plans: list[CheckpointPlan], run_id: str) -> None:
    """Checkpoints with nothing left to do get no lease from this run, so nothing else would tidy them: remove what
    dead runs left there (stale leases, temporary files) now; one a live run holds is left alone."""
    for plan in plans:
        if plan.todo:
            continue  # tidied under this run's lease once it holds it (Scheduler.acquire_leases)
        try:
            Lake(plan.job.lake).tidy(*plan.key, run_id)
        except Exception as e:  # housekeeping must not end a run
            log.warning("%s: could not tidy what earlier runs left: %s", plan.label, _first_line(e))


def _compute_pairs(plans: list[CheckpointPlan], failed: list[FailedUnit] = ()) -> list[FailedUnit]:
    """Every (pivot, language) pair of the checkpoints whose job asks for `pivots`: a BLAS pass over the stored
    states in the driver, once each checkpoint's languages are all in the lake (each ran its forward pass once)."""
    from neuronxa_ray.scoring import compute_pairs

    broken = {(f.model, f.checkpoint) for f in failed}
    out = []
    for plan in plans:
        if plan.job.pivots is None or plan.key in broken:
            continue
        try:
            rows = compute_pairs(Lake(plan.job.lake), *plan.key, plan.languages, plan.job.pivots, base_pivot=plan.pivot)
        except Exception as e:  # e.g. the lake stopped answering: the pairs fail, not the run
            out.append(FailedUnit(*plan.key, "(pairs)", 1, _first_line(e)))
            continue
        if rows:
            log.info("%s: every language pair computed (%d match rows)", plan.label, rows)
    return out


def run_job(job: JobConfig, lake_root: str | None = None, progress: bool | None = None, **kwargs) -> list[dict]:
    """One job; returns its runs rows (one per checkpoint that computed). Raises when a unit failed."""
    if lake_root is not None:
        job = dataclasses.replace(job, lake=str(lake_root))
    report = run_jobs([job], RunOptions(progress=progress, **kwargs))
    if report.failed:
        first = report.failed[0]
        raise RuntimeError(
            f"{len(report.failed)} unit(s) failed; first: {first.model} @ {first.checkpoint} {first.lang}: "
            f"{first.error}"
        )
    return report.runs


def _runs_row(plan: CheckpointPlan, run_id, results, started, n_actors, startup_s, wall_s) -> dict:
    import torch
    import transformers

    job, first = plan.job, results[0]
    n_sent = sum(r.n_sentences for r in results)
    return {
        "run_id": run_id,
        "model": job.model_name,
        "checkpoint": plan.checkpoint.name,
        "revision": plan.checkpoint.revision,
        "step": plan.checkpoint.step,
        "pivot_lang": job.pivot,
        "languages": plan.languages,
        "n_languages": len(plan.languages),
        "n_languages_computed": len(results),
        "n_sentences": len(plan.corpus.ids),
        "n_layers": first.n_layers,
        "d_ff": first.d_ff,
        "d_model": first.d_model,
        "model_type": first.model_type,
        "hook_site": job.hook_site,
        "device": first.device,
        "dtype": first.dtype,
        "num_actors": n_actors,
        "started_at": started,
        "finished_at": _now(),
        "wall_s": wall_s,
        "startup_s": startup_s,
        "extract_s": sum(r.extract_s for r in results),
        "write_s": sum(r.write_s for r in results),
        "n_tokens": sum(r.n_tokens for r in results),
        "sentences_per_s": n_sent / max(wall_s - startup_s, 1e-9),
        "code_version": _code_version(),
        "schema_version": SCHEMA_VERSION,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "config_json": _config_json(plan),
    }


def _config_json(plan: CheckpointPlan) -> str:
    import json

    return json.dumps(
        {**plan.job.to_dict(), "max_length": plan.max_length, "fingerprint": plan.fingerprint},
        default=str,
        sort_keys=True,
    )
