"""Actors kept between runs of one process: within a `keep_actors()` block, an actor that ends a run idle is reset
(its model dropped) and kept for the next run that asks for actors of the same shape, instead of being killed and a
new one started. A new actor is a new process that imports torch and transformers before it loads anything: several
CPU seconds, and on a GPU a new CUDA context. The block's end kills what is still kept.

`run_jobs` keeps its actors from its first phase to its second (interventions); `watch` keeps them over the
checkpoints of one poll (a training run's backlog is many runs in a row); a notebook or a script that calls
`run_jobs` several times may open a block around them. Kept actors hold their Ray resources (CPUs, GPUs) while they
wait, so a block is kept to work that follows at once; a pool of another shape first kills the kept ones.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

ALIVE_TIMEOUT_S = 30.0  # a kept actor that does not answer within this is given up (its node may be gone)


class KeptActors:
    """Idle actors by shape: (Ray job, Ray options, torch threads); the worker factory is set again on reuse."""

    def __init__(self) -> None:
        self.idle: dict[tuple, list[Any]] = {}
        self.reused = 0

    def take(self, ray, key: tuple, factory: Any = None) -> Any | None:
        """A kept actor of this shape that still answers, set to the given worker factory, or None; kills kept
        actors of other shapes, which hold resources this pool may need."""
        for other in [k for k in self.idle if k != key]:
            _kill(ray, self.idle.pop(other))
        handles = self.idle.get(key, [])
        while handles:
            handle = handles.pop()
            try:
                ray.get(handle.reset.remote(factory), timeout=ALIVE_TIMEOUT_S)
            except Exception as e:  # lost with its node, or killed: start a new one instead
                log.debug("a kept actor is gone (%s); starting a new one", str(e).splitlines()[0] if str(e) else e)
                _kill(ray, [handle])
                continue
            self.reused += 1
            return handle
        return None

    def put(self, ray, key: tuple, handle: Any) -> None:
        """Keep an idle actor: it drops its model now (reset), and waits for the next pool of its shape."""
        try:
            handle.reset.remote()
        except Exception:  # already gone
            _kill(ray, [handle])
            return
        self.idle.setdefault(key, []).append(handle)

    def release(self) -> None:
        """Kill every kept actor."""
        if not self.idle:
            return
        import ray

        for handles in self.idle.values():
            _kill(ray, handles)
        self.idle.clear()


def _kill(ray, handles: list[Any]) -> None:
    for handle in handles:
        with contextlib.suppress(Exception):  # already gone, or Ray shut down
            ray.kill(handle)


_kept: KeptActors | None = None


def kept() -> KeptActors | None:
    """The innermost open block's kept actors, or None outside any block."""
    return _kept


@contextlib.contextmanager
def keep_actors() -> Iterator[KeptActors]:
    """Keep idle actors between the runs inside this block; an inner block joins the outer one (its actors are
    killed when the outermost block ends)."""
    global _kept
    if _kept is not None:
        yield _kept
        return
    _kept = KeptActors()
    try:
        yield _kept
    finally:
        block, _kept = _kept, None
        block.release()


def shape_key(ray, options: dict, threads: int) -> tuple | None:
    """What makes two actors interchangeable; None when they cannot be compared."""
    try:
        key = (ray.get_runtime_context().get_job_id(), tuple(sorted(options.items())), threads)
        hash(key)
    except Exception:
        return None
    return key
