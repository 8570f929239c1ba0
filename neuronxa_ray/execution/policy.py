"""Which work an actor takes next, as pure functions of the scheduler's queues (no Ray, no clock): unit-tested
alone. The rules:
- an actor keeps its loaded checkpoint while units of it remain (its pivot first; the other languages once the
  pivot's states are ready);
- when its checkpoint runs out it takes a checkpoint no one has started (the one it reserved first), so there is
  about one model load per checkpoint;
- else it helps the checkpoint with the most waiting units per actor already on it;
- with nothing in flight, it loads (warms) a started checkpoint whose pivot it is waiting for, when that one has
  more waiting units than actors;
- once its checkpoint's pivot is done, it reserves the next fresh checkpoint, whose weights then load into host
  memory behind the remaining languages (one reservation per actor).
"""

from __future__ import annotations

from neuronxa_ray.execution.state import Queues, Slot


def ready(q: Queues, pi: int) -> bool:
    """The plan's next unit can run now: its pivot, or a language once the pivot's states are ready."""
    queue = q.pending[pi]
    if not queue or pi in q.held:
        return False
    return queue[0].lang == q.pivots[pi] or pi in q.pivot_ready


def fresh(q: Queues, pi: int) -> bool:
    """No unit of the plan was submitted yet (and it has some, and its lake answers)."""
    return pi not in q.started and bool(q.pending[pi]) and pi not in q.held


def serving(slots: list[Slot], pi: int) -> int:
    return sum(1 for s in slots if s.loaded == pi)


def pick(q: Queues, slot: Slot, alive: list[Slot]) -> tuple[str, int] | None:
    """('unit', plan) to submit the next unit of plan, ('warm', plan) to load it while its pivot runs, or None."""
    if slot.loaded is not None and ready(q, slot.loaded):
        return ("unit", slot.loaded)
    if slot.loaded is not None and q.pending[slot.loaded] and slot.inflight:
        return None  # its checkpoint still has work (waiting for the pivot it computes): stay with it
    mine = [pi for pi in q.pending if fresh(q, pi) and q.reserved.get(pi, slot.id) == slot.id]
    mine.sort(key=lambda pi: q.reserved.get(pi) != slot.id)  # the one it prefetched first
    if mine:
        return ("unit", mine[0])
    helpable = [pi for pi in q.pending if ready(q, pi) and pi != slot.loaded]
    if helpable:  # the checkpoint with the most work per actor already on it
        return ("unit", max(helpable, key=lambda pi: len(q.pending[pi]) / (1 + serving(alive, pi))))
    if slot.inflight:
        return None
    waiting = [pi for pi in q.pending if q.pending[pi] and pi != slot.loaded and pi in q.started]
    waiting = [pi for pi in waiting if len(q.pending[pi]) > serving(alive, pi) and pi not in q.held]
    if waiting:
        return ("warm", max(waiting, key=lambda pi: len(q.pending[pi])))
    return None


def reserve_next(q: Queues, slot: Slot, is_pivot: bool) -> int | None:
    """The fresh plan this actor reserves to prefetch once its checkpoint's pivot is done (recorded in q), or None."""
    if is_pivot or slot.id in q.reserved.values():
        return None
    for pi in q.pending:
        if fresh(q, pi) and pi not in q.reserved:
            q.reserved[pi] = slot.id
            return pi
    return None


def first_loads(q: Queues, slots: list[Slot]) -> list[tuple[Slot, int]]:
    """At start-up, the checkpoint each actor loads first (one fresh checkpoint per actor, in plan order)."""
    return list(zip(slots, [pi for pi in q.pending if fresh(q, pi)]))
