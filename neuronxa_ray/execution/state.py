"""The scheduler's state, without Ray: the run's options and report, one unit of work and its attempts, a lake's
outage, and the queues a policy reads (which units wait, which checkpoints started, which pivots are ready).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from typing import Any


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
    lakes_down: list[str] = field(default_factory=list)  # lakes that stopped answering and were given up on

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Unit:
    """One (checkpoint plan, language) and its latest attempt."""

    plan: int
    lang: str
    attempts: int = 0
    status: str = "pending"  # pending | running | written | done | failed
    error: str | None = None
    started: dt.datetime | None = None
    node: str = ""
    result: Any = None  # the worker's LanguageResult of this attempt, once it computed


@dataclass
class Slot:
    """The driver's view of one actor."""

    id: int
    handle: Any
    node: str = ""
    loaded: int | None = None  # the plan whose checkpoint it has (or will have, after its queued units) loaded
    inflight: list = field(default_factory=list)  # (ref, kind, unit): kind "unit" | "warm" | "flush"
    unconfirmed: list = field(default_factory=list)  # units computed whose writes are not confirmed yet
    alive: bool = True
    loads: int = 0


@dataclass
class Queues:
    """What the placement policy decides from: per checkpoint plan, its waiting units (its pivot first), whether a
    unit of it was submitted, whether its pivot's states are ready, which actor reserved it, and which plans wait
    for a lake that stopped answering."""

    pivots: list[str]  # per plan, its pivot language
    pending: dict[int, deque[Unit]]
    started: set[int] = field(default_factory=set)
    pivot_ready: dict[int, Any] = field(default_factory=dict)  # plan -> its pivot states ref (None: in the lake)
    reserved: dict[int, int] = field(default_factory=dict)  # fresh plan -> the slot that will take it (prefetching)
    held: set[int] = field(default_factory=set)  # plans whose lake is in an outage

    @classmethod
    def of(cls, pivots: list[str], units: list[Unit]) -> Queues:
        pending: dict[int, deque[Unit]] = {i: deque() for i in range(len(pivots))}
        for unit in units:
            pending[unit.plan].append(unit)
        return cls(pivots, pending)

    def requeue(self, unit: Unit) -> None:
        """A unit to try again: at the head of its queue, behind its checkpoint's pivot if that waits too."""
        unit.status = "pending"
        queue = self.pending[unit.plan]
        queue.appendleft(unit)
        pivot = self.pivots[unit.plan]
        if unit.lang != pivot:
            for u in [u for u in queue if u.lang == pivot]:
                queue.remove(u)
                queue.appendleft(u)


def first_line(e: BaseException) -> str:
    """The first line of an error's message (of the original error, for one raised inside an actor)."""
    cause = getattr(e, "cause", None) or e
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return (lines[0] if lines else type(cause).__name__)[:300]


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def utc(epoch_s: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc) if epoch_s else None
