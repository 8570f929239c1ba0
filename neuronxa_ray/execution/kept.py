"""Actors kept between runs of one process: within a `keep_actors()` block, an actor that ends a run idle is reset
(its model dropped) and kept for the next run that asks for actors of the same shape, instead of being killed and a
new one started. A new actor is a new process that imports torch and transformers before it loads anything: several
CPU seconds, and on a GPU a new CUDA context. The block's end kills what is still kept.

`run_jobs` keeps its actors from its first phase to its second (interventions); `watch` keeps them over the
checkpoints of one poll (a training run's backlog is many runs in a row); a notebook or a script that calls
`run_jobs` several times may open a block around them. Kept actors hold their Ray resources (CPUs, GPUs) while they
wait, against every driver on that Ray (another process's waits until the block ends), so a block is kept to work
that follows at once; a pool of another shape in this process first kills the kept ones. Blocks are per thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from neuronxa_ray.execution.state import first_line

log = logging.getLogger(__name__)

ALIVE_TIMEOUT_S = 30.0  # kept actors that do not answer within this (together) are given up: their node may be gone


class KeptActors:
    """Idle actors by shape: (Ray connection, Ray options, torch threads); the worker factory is set again on
    reuse. Handles from an earlier Ray connection (Ray shut down and started again) are dropped unused."""

    def __init__(self) -> None:
        self.idle: dict[tuple, list[Any]] = {}
        self.reused = 0

    def take(self, ray, key: tuple, factory: Any = None) -> Any | None:
        """A kept actor of this shape that still answers, set to the given worker factory, or None. Kills kept
        actors of other shapes first (they hold resources this pool may need); checks all candidates at once."""
        for other in [k for k in self.idle if k != key]:
            handles = self.idle.pop(other)
            if other[0] == key[0]:  # the same Ray: free their resources; handles of an earlier Ray are just dropped
                _kill(ray, handles)
        handles, self.idle[key] = self.idle.get(key, []), []
        if not handles:
            return None
        alive = []
        try:
            refs = {handle.reset.remote(factory): handle for handle in handles}
            ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=ALIVE_TIMEOUT_S)
            for ref in ready:
                try:
                    ray.get(ref)
                    alive.append(refs[ref])
                except Exception as e:  # lost with its node, or killed: a new one is started instead
                    log.debug("a kept actor is gone (%s)", first_line(e))
                    _kill(ray, [refs[ref]])
            _kill(ray, [refs[ref] for ref in late])
        except BaseException:  # Ctrl-C while checking: none may outlive the block
            _kill(ray, handles)
            raise
        if not alive:
            return None
        self.idle[key] = alive[1:]  # reset with this factory too; reset again when taken
        self.reused += 1
        return alive[0]

    def put(self, ray, key: tuple, handle: Any) -> None:
        """Keep an idle actor: it drops its model now (reset), and waits for the next pool of its shape."""
        try:
            handle.reset.remote()
        except Exception:  # already gone
            _kill(ray, [handle])
            return
        self.idle.setdefault(key, []).append(handle)

    def release(self) -> None:
        """Kill every kept actor (those of an earlier Ray connection are dropped)."""
        if not self.idle:
            return
        import ray

        session = _connection(ray)
        idle, self.idle = self.idle, {}
        for key, handles in idle.items():
            if key[0] == session:
                _kill(ray, handles)


def _kill(ray, handles: list[Any]) -> None:
    for handle in handles:
        with contextlib.suppress(Exception):  # already gone, or Ray shut down
            ray.kill(handle)


def _connection(ray) -> str | None:
    """This process's connection to Ray (a new one after ray.shutdown() and ray.init()), None when not connected."""
    try:
        return ray.get_runtime_context().get_worker_id() if ray.is_initialized() else None
    except Exception:
        return None


_local = threading.local()  # one block per thread: two threads' runs never decide each other's actors


def kept() -> KeptActors | None:
    """The open block of this thread, or None outside any block."""
    return getattr(_local, "kept", None)


@contextlib.contextmanager
def keep_actors() -> Iterator[KeptActors]:
    """Keep idle actors between the runs inside this block (in this thread); an inner block joins the outer one
    (its actors are killed when the outermost block ends)."""
    outer = kept()
    if outer is not None:
        yield outer
        return
    _local.kept = block = KeptActors()
    try:
        yield block
    finally:
        _local.kept = None
        block.release()


def shape_key(ray, options: dict, threads: int) -> tuple | None:
    """What makes two actors interchangeable; None when they cannot be compared."""
    try:
        key = (_connection(ray), tuple(sorted(options.items())), threads)
        hash(key)
    except Exception:
        return None
    return key if key[0] is not None else None
