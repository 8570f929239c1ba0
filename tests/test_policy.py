"""The scheduler's placement policy as pure functions of its queues: no Ray, no actors, no clock."""

from __future__ import annotations

import sys

from neuronxa_ray.execution import policy
from neuronxa_ray.execution.state import Queues, Slot, Unit


def _queues(*plans: list[str]) -> Queues:
    """One plan per argument: its languages, the pivot first."""
    units = [Unit(pi, lang) for pi, langs in enumerate(plans) for lang in langs]
    return Queues.of([langs[0] for langs in plans], units)


def _submit(q: Queues, slot: Slot, pi: int) -> Unit:
    """What the dispatcher does with a ('unit', pi) pick."""
    unit = q.pending[pi].popleft()
    q.started.add(pi)
    q.reserved.pop(pi, None)
    slot.loaded = pi
    slot.inflight.append((object(), "unit", unit))
    return unit


def test_a_pivot_runs_first_and_its_languages_wait_for_it():
    q = _queues(["eng", "fra", "deu"])
    a, b = Slot(0, None, "n"), Slot(1, None, "n")
    assert policy.pick(q, a, [a, b]) == ("unit", 0)
    assert _submit(q, a, 0).lang == "eng"
    assert policy.pick(q, a, [a, b]) is None  # its checkpoint waits for the pivot it computes: it stays
    assert policy.pick(q, b, [a, b]) == ("warm", 0)  # idle, and fra + deu outnumber the one actor on it
    q.pivot_ready[0] = None
    assert policy.pick(q, a, [a, b]) == ("unit", 0)
    assert policy.pick(q, b, [a, b]) == ("unit", 0)  # helps once the pivot is ready


def test_an_actor_keeps_its_checkpoint_then_takes_a_fresh_one():
    q = _queues(["eng", "fra"], ["eng", "fra"])
    a = Slot(0, None, "n")
    _submit(q, a, 0)
    q.pivot_ready[0] = None
    a.inflight.clear()
    assert policy.pick(q, a, [a]) == ("unit", 0)
    _submit(q, a, 0)
    a.inflight.clear()
    assert policy.pick(q, a, [a]) == ("unit", 1)  # its checkpoint is done: a fresh one, not a warm-up


def test_a_reserved_checkpoint_goes_to_the_actor_that_prefetched_it():
    q = _queues(["eng", "fra", "deu"], ["eng", "fra"], ["eng", "fra"])
    a, b = Slot(0, None, "n"), Slot(1, None, "n")
    _submit(q, a, 0)
    assert policy.reserve_next(q, a, is_pivot=True) is None  # not while its own pivot runs
    assert policy.reserve_next(q, a, is_pivot=False) == 1
    assert policy.reserve_next(q, a, is_pivot=False) is None  # one reservation per actor
    assert policy.pick(q, b, [a, b]) == ("unit", 2)  # b leaves a's reservation alone
    _submit(q, b, 2)
    b.inflight.clear()
    q.pivot_ready.update({0: None, 2: None})
    q.pending[0].clear()
    a.inflight.clear()
    assert policy.pick(q, a, [a, b]) == ("unit", 1)


def test_helping_goes_where_the_most_work_per_actor_waits():
    q = _queues(["eng", "a", "b"], ["eng", "a", "b", "c", "d"])
    x, y, z = Slot(0, None, "n"), Slot(1, None, "n"), Slot(2, None, "n")
    _submit(q, x, 0)
    _submit(q, y, 1)
    q.pivot_ready.update({0: None, 1: None})
    assert policy.pick(q, z, [x, y, z]) == ("unit", 1)  # 4 waiting / 2 vs 2 waiting / 2


def test_a_plan_whose_lake_is_in_an_outage_is_not_picked():
    q = _queues(["eng", "fra"], ["eng", "fra"])
    a = Slot(0, None, "n")
    q.held = {0}
    assert policy.pick(q, a, [a]) == ("unit", 1)
    q.held = {0, 1}
    assert policy.pick(q, a, [a]) is None
    assert policy.first_loads(q, [a]) == []


def test_start_up_loads_one_fresh_checkpoint_per_actor():
    q = _queues(["eng", "fra"], ["eng", "fra"], ["eng", "fra"])
    a, b = Slot(0, None, "n"), Slot(1, None, "n")
    assert [(s.id, pi) for s, pi in policy.first_loads(q, [a, b])] == [(0, 0), (1, 1)]


def test_a_requeued_language_waits_behind_its_pivot():
    q = _queues(["eng", "fra", "deu"])
    fra = q.pending[0][1]
    q.pending[0].remove(fra)
    q.requeue(fra)
    assert [u.lang for u in q.pending[0]] == ["eng", "fra", "deu"]


def test_the_policy_and_the_state_need_no_ray():
    import subprocess

    code = "import sys, neuronxa_ray.execution.policy; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
