"""The actor pool: creates the actors, waits (up to a time limit) for them to be placed, names what was asked and
what the cluster has when they cannot be, and replaces dead ones while the cluster has room.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution.actor import Actor
from neuronxa_ray.execution.kept import kept, shape_key
from neuronxa_ray.execution.state import Slot, first_line

log = logging.getLogger(__name__)

# An actor that has its place (a worker process on a node) but has not started yet is importing torch and
# transformers: seconds on a quiet machine, more than a minute on a busy one. placement_timeout_s bounds the wait for
# a place; once every actor still waited for has one, they get up to this much longer to start.
STARTUP_TIMEOUT_S = 600.0
RENEW_S = 30.0  # while waiting for actors, the run's lease heartbeat is called this often


def starting(ray, handle) -> bool:
    """Whether the actor has a worker process on a node, still starting or just started (read from Ray's actor
    table; False when that cannot be read, so the placement limit applies as it is). A worker process still booting
    has no pid yet: that wait counts against the placement limit."""
    try:
        from ray._private.state import actors

        info = actors(handle._actor_id.hex())
        return info.get("State") == "ALIVE" or (info.get("State") == "PENDING_CREATION" and bool(info.get("Pid")))
    except Exception:
        return False


class ActorPool:
    """Creates the actors, waits (up to a time limit) for them to be placed, and replaces dead ones."""

    def __init__(self, ray, size: int, options: dict, threads: int, factory: Any, timeout_s: float) -> None:
        self.ray = ray
        self.options = options
        self.threads = threads
        self.factory = factory
        self.timeout_s = timeout_s
        self.size = size
        self.slots: list[Slot] = []
        self.placing: dict[Any, tuple[Slot, float]] = {}  # ready ref -> (slot, deadline)
        self._extended: set = set()  # replacements given the start-up limit on top of their placement limit
        self._cls = ray.remote(**options)(Actor)
        self.key = shape_key(ray, options, threads)

    def _new(self) -> tuple[Slot, Any]:
        """A slot for an actor: one kept from an earlier run of this process (see keep_actors), else a new one."""
        block = kept()
        handle = block.take(self.ray, self.key, self.factory) if block is not None and self.key is not None else None
        slot = Slot(id=len(self.slots), handle=handle or self._cls.remote(self.threads, self.factory))
        self.slots.append(slot)
        return slot, slot.handle.ready.remote()

    def launch(self) -> None:
        """Ask for the actors without waiting: calls queued on them run once each is placed and started."""
        self._starting = {}
        for _ in range(self.size):
            slot, ref = self._new()
            self._starting[ref] = slot

    def _wait(self, refs: list, timeout_s: float, renew: Callable[[], None]) -> tuple[list, list]:
        """ray.wait for all of refs up to timeout_s, calling renew (the run's lease heartbeat) every RENEW_S."""
        ready, deadline = [], time.monotonic() + timeout_s
        while refs:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more, refs = self.ray.wait(refs, num_returns=len(refs), timeout=min(left, RENEW_S))
            ready += more
            renew()
        return ready, refs

    def wait_placed(self, renew: Callable[[], None] = lambda: None) -> None:
        """Wait up to the time limit for every actor; an error naming what was asked and what the cluster has.
        renew: called while waiting (the run's leases must not go stale over a long start-up)."""
        refs = self._starting
        ready, waiting = self._wait(list(refs), self.timeout_s, renew)
        if waiting and all(starting(self.ray, refs[ref].handle) for ref in waiting):
            log.info(
                "%d actor(s) placed but still starting after %.0fs (a busy machine); waiting up to %.0fs more",
                len(waiting),
                self.timeout_s,
                STARTUP_TIMEOUT_S,
            )
            more, waiting = self._wait(waiting, STARTUP_TIMEOUT_S, renew)
            ready += more
            if waiting:
                self.shutdown()
                raise NeuronxaError(
                    f"{len(waiting)} actor(s) placed but not started within {self.timeout_s + STARTUP_TIMEOUT_S:g}s "
                    "(importing torch and transformers, or their node stalled); the Ray logs of the actors say why"
                )
        if waiting:
            self.shutdown()
            raise NeuronxaError(self.describe_shortfall(len(ready)))
        for ref in ready:
            refs[ref].node = self.ray.get(ref)["node"]

    def replace(self, dead: Slot) -> None:
        slot, ref = self._new()
        self.placing[ref] = (slot, time.monotonic() + self.timeout_s)
        log.warning("actor %d lost (node %s); starting a replacement", dead.id, dead.node or "?")

    def placed(self, ref) -> Slot | None:
        slot, _ = self.placing.pop(ref)
        try:
            slot.node = self.ray.get(ref)["node"]
            return slot
        except Exception as e:
            log.warning("a replacement actor could not start: %s", first_line(e))
            slot.alive = False
            return None

    def expire(self) -> None:
        now = time.monotonic()
        for ref, (slot, deadline) in list(self.placing.items()):
            if now <= deadline:
                continue
            if ref not in self._extended and starting(self.ray, slot.handle):
                self._extended.add(ref)  # placed, still starting: once, the start-up limit on top
                self.placing[ref] = (slot, deadline + STARTUP_TIMEOUT_S)
                continue
            del self.placing[ref]
            slot.alive = False
            self.ray.kill(slot.handle)
            why = (
                f"placed but not started within {self.timeout_s + STARTUP_TIMEOUT_S:.0f}s"
                if ref in self._extended
                else f"no room for it within {self.timeout_s:.0f}s"
            )
            log.warning("a replacement actor %s; going on with %d actor(s)", why, len(self.alive()))

    def alive(self) -> list[Slot]:
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

    def shutdown(self, keep: bool = False) -> None:
        """Kill the actors; keep: hand those placed, alive and idle to the open keep_actors() block instead."""
        block = kept()
        for slot in self.slots:
            idle = all(kind == "flush" for _, kind, _ in slot.inflight)  # not loading weights no unit needs
            if keep and block is not None and self.key is not None and slot.alive and slot.node and idle:
                block.put(self.ray, self.key, slot.handle)
                continue
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(slot.handle)
