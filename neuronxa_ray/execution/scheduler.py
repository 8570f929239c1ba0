"""The scheduler's loop: fill the actors (dispatch, by the policy), wait for any call to return, and settle what it
says: a unit computed and its writes confirmed, a unit's own error (it fails alone; a failed pivot fails its
checkpoint), an actor or node lost (its units retried elsewhere up to max_attempts, the actor replaced while the
cluster has room), a write that failed (the lake probed; see lakes). Every attempt is an attempts row.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from neuronxa_ray.execution.bookkeeping import AttemptLog, Progress
from neuronxa_ray.execution.dispatch import Dispatcher
from neuronxa_ray.execution.lakes import LakeWatch
from neuronxa_ray.execution.leases import RunLeases
from neuronxa_ray.execution.pool import ActorPool
from neuronxa_ray.execution.state import FailedUnit, Queues, Slot, Unit, first_line
from neuronxa_ray.lake import Lake
from neuronxa_ray.planning.plan import CheckpointPlan
from neuronxa_ray.worker.worker import LanguageResult, WriteOutcome

log = logging.getLogger(__name__)

SETTLED = ("done", "failed")


class Scheduler:
    """Places units on the pool's actors until every unit is done or failed."""

    def __init__(self, ray, pool: ActorPool, plans: list[CheckpointPlan], run_id: str, progress: bool | None) -> None:
        self.ray, self.pool, self.plans, self.run_id = ray, pool, plans, run_id
        self.units = [Unit(i, lang) for i, plan in enumerate(plans) for lang in plan.todo]
        self.q = Queues.of([p.pivot for p in plans], self.units)
        by_root: dict[str, Lake] = {}
        self.lakes = {i: by_root.setdefault(p.job.lake, Lake(p.job.lake)) for i, p in enumerate(plans)}
        self.watch = LakeWatch(list(by_root.values()))
        self.leases = RunLeases(plans, self.lakes, run_id, self.watch)
        self.attempts = AttemptLog(run_id, self.watch.answers)
        self.dispatch = Dispatcher(pool, plans, self.lakes, self.q, {}, run_id)
        self.progress = Progress(len(self.units), progress)
        self.cut: set[int] = set()  # plans whose units a lost actor held: a write of theirs may have been cut short

    def run(self) -> None:
        try:
            while not all(u.status in SETTLED for u in self.units):
                self.dispatch.fill({pi for pi, lake in self.lakes.items() if lake.uri in self.watch.outages})
                self._flush_idle()
                refs = [ref for slot in self.pool.alive() for ref, _, _ in slot.inflight] + list(self.pool.placing)
                if not refs and self.watch.pause():
                    self._probe_lakes()
                    continue
                if not refs:
                    self._stalled()
                    break
                done, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
                for ref in done:
                    self._handle(ref)
                self.pool.expire()
                self._probe_lakes()
                self.attempts.flush(force=False)
                self.leases.renew_due()
        finally:
            self.progress.close()
            self.attempts.flush(force=True)

    def _stalled(self) -> None:
        """Nothing in flight and nothing placeable: fail what remains rather than wait forever."""
        why = (
            "no actor left to run it (actors lost and no room for replacements)"
            if not self.pool.alive()
            else "nothing could run it (a scheduler bug; please report: " + self._debug_state() + ")"
        )
        for unit in self.units:
            if unit.status not in SETTLED:
                self._fail(unit, why)

    def _debug_state(self) -> str:
        units = [(self.plans[u.plan].checkpoint.name, u.lang, u.status, u.attempts) for u in self.units]
        slots = [(s.id, s.alive, s.node, s.loaded, len(s.inflight), len(s.unconfirmed)) for s in self.pool.slots]
        pending = {pi: [u.lang for u in q] for pi, q in self.q.pending.items() if q}
        return f"units={units} slots={slots} pending={pending} pivots={sorted(self.q.pivot_ready)}"

    def _flush_idle(self) -> None:
        """Actors with nothing left to do confirm their last writes."""
        for slot in self.pool.alive():
            if slot.unconfirmed and not slot.inflight:
                slot.inflight.append((slot.handle.flush.remote(), "flush", None))

    # ----- what a call returned
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
                self._retry_or_fail(unit, first_line(e), "lost")
            elif kind == "unit":
                self._unit_error(unit, first_line(e))
            elif kind == "warm":
                slot.loaded = None  # the units will meet the error and fail with it
            else:
                self._actor_lost(slot, first_line(e))
            return
        except Exception as e:  # the actor or its node is gone (RayActorError, ObjectLostError, ...)
            self._actor_lost(slot, f"{type(e).__name__}: {first_line(e)}", also=[unit] if unit else [])
            return
        if kind == "unit":
            self._computed(slot, unit, value)
            return
        self._confirm(slot, value)
        if kind == "flush":  # anything still unconfirmed after a flush was never written: check the lake
            unconfirmed, slot.unconfirmed = slot.unconfirmed, []
            for u in unconfirmed:
                self._in_lake_or_retry(u, "its write was never confirmed")

    def _computed(self, slot: Slot, unit: Unit, result: LanguageResult) -> None:
        self._confirm(slot, result.confirmed)
        unit.status, unit.result = "written", result
        slot.unconfirmed.append(unit)
        if unit.lang == self.plans[unit.plan].pivot:  # its languages may run now, here and on other actors
            self.q.pivot_ready[unit.plan] = self.dispatch.states_refs.pop(unit.plan, None)
        self.progress.computed(self.plans[unit.plan], unit, result, slot.node)

    def _confirm(self, slot: Slot, outcomes: list[WriteOutcome]) -> None:
        for outcome in outcomes:
            key = (outcome.model_name, outcome.checkpoint)
            unit = next((u for u in slot.unconfirmed if u.lang == outcome.lang and self.plans[u.plan].key == key), None)
            if unit is None:
                continue
            slot.unconfirmed.remove(unit)
            if outcome.error:
                self._write_failed(unit, outcome)
            else:
                self._done(unit, outcome.finished_at)
        self._release_finished_plans()

    # ----- settling units
    def _record(self, unit: Unit, status: str, error: str | None, **kw: Any) -> None:
        self.attempts.add(self.plans[unit.plan], self.lakes[unit.plan], unit, status, error, **kw)

    def _done(self, unit: Unit, finished_at: float | None = None) -> None:
        unit.status = "done"
        self._record(unit, "ok", None, finished_at=finished_at)
        self.progress.settled()

    def _unit_error(self, unit: Unit, message: str) -> None:
        """The unit's own error (bad data, a model error): it fails alone, and a failed pivot fails its checkpoint."""
        self._record(unit, "failed", message)
        self._fail(unit, message, record=False)
        self._fail_waiting_on_pivot(unit)

    def _fail_waiting_on_pivot(self, unit: Unit) -> None:
        """A pivot that failed for good takes its checkpoint's waiting languages with it."""
        plan = self.plans[unit.plan]
        if unit.lang != plan.pivot or unit.plan in self.q.pivot_ready:
            return
        while self.q.pending[unit.plan]:
            self._fail(self.q.pending[unit.plan].popleft(), f"the pivot {plan.pivot!r} failed: {unit.error}")

    def _actor_lost(self, slot: Slot, reason: str, also: list[Unit] = ()) -> None:
        """Requeue every unit the actor held (running, queued, or computed but not confirmed written)."""
        if not slot.alive:
            return
        slot.alive = False
        lost = [*also, *(u for _, kind, u in slot.inflight if kind == "unit"), *slot.unconfirmed]
        slot.inflight, slot.unconfirmed = [], []
        self.cut.update(unit.plan for unit in lost)
        for unit in lost:
            self._in_lake_or_retry(unit, f"actor lost: {reason}")
        for pi, key_slot in list(self.q.reserved.items()):
            if key_slot == slot.id:
                del self.q.reserved[pi]
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(slot.handle)
        if any(u.status == "pending" for u in self.units):
            self.pool.replace(slot)
        self._release_finished_plans()

    def _in_lake_or_retry(self, unit: Unit, message: str) -> None:
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

    def _write_failed(self, unit: Unit, outcome: WriteOutcome) -> None:
        """A write that failed: a lake that does not answer a probe either holds its units (see lakes)."""
        self.watch.write_failed(self.lakes[unit.plan])
        self._retry_or_fail(unit, f"writing to the lake failed: {outcome.error}", "failed", outcome.finished_at)

    def _probe_lakes(self) -> None:
        for uri in self.watch.probe_due():  # given up: the units waiting for it fail
            outage = self.watch.outages[uri]
            for pi, queue in self.q.pending.items():
                while self.lakes[pi].uri == uri and queue:
                    self._fail(queue.popleft(), outage.error())

    def _retry_or_fail(self, unit: Unit, message: str, status: str, finished_at: float | None = None) -> None:
        self._record(unit, status, message, finished_at=finished_at)
        outage = self.watch.given_up(self.lakes[unit.plan])
        if outage is not None:  # no retry on a lake given up on
            self._fail(unit, outage.error(), record=False)
            return
        if unit.attempts >= self.plans[unit.plan].job.max_attempts:
            self._fail(unit, f"{message} ({unit.attempts} attempts)", record=False)
            self._fail_waiting_on_pivot(unit)
            return
        log.warning("%s %s: %s; retrying", self.plans[unit.plan].label, unit.lang, message)
        self.q.requeue(unit)

    def _fail(self, unit: Unit, message: str, record: bool = True) -> None:
        if record:
            self._record(unit, "failed", message, finished_only=unit.started is None)
        unit.status, unit.error = "failed", message
        self.progress.settled()

    def _release_finished_plans(self) -> None:
        """A checkpoint whose units are all settled no longer needs its pivot's states in the object store."""
        for pi in list(self.q.pivot_ready):
            if all(u.status in SETTLED for u in self.units if u.plan == pi):
                del self.q.pivot_ready[pi]

    def failed_units(self) -> list[FailedUnit]:
        return [
            FailedUnit(*self.plans[u.plan].key, u.lang, u.attempts, u.error or "")
            for u in self.units
            if u.status == "failed"
        ]
