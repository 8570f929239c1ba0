"""The Ray actor: one loaded checkpoint at a time (plus, at most, the next one prefetched into host memory),
wrapping the Ray-free LanguageWorker; it returns each language's small result and, for a pivot shared with other
actors, its states as a second object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from neuronxa_ray.execution.state import first_line
from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings, WriteOutcome

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # per actor: one running, one queued, so an actor never waits for the driver


class Actor:
    """One loaded checkpoint at a time (plus, at most, the next one prefetched into host memory)."""

    def __init__(self, threads: int, factory: Any = None) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its bars would interleave with the driver's through Ray's log stream
        hf_logging.set_verbosity_error()
        torch.set_num_threads(max(1, threads))
        self.factory = factory or LanguageWorker
        self.worker = None
        self.loaded: int | None = None
        self.prefetched: dict[int, Future] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.loads = 0
        self.outbox: list[WriteOutcome] = []  # finished writes not yet reported (survives a call that raises)
        self._write_base = 0.0  # the worker's write seconds already reported
        self._to_free = False  # something was loaded (or began loading) since the last reset

    def _take(self) -> list[WriteOutcome]:
        out, self.outbox = self.outbox, []
        return out

    def ready(self) -> dict:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"node": f"{socket.gethostname()}/{node[:8]}", "pid": os.getpid()}

    def warm(self, pi: int, spec, settings: WorkerSettings) -> list[WriteOutcome]:
        """Load the checkpoint of plan `pi` (if it is not the loaded one); return the writes confirmed so far."""
        if pi == self.loaded:
            return self._take()
        if self._serves(spec, settings):
            self.outbox += self.worker.collect()  # another evaluation of the loaded weights: no load
            self.worker.retarget(settings)
            self.loaded = pi
            return self._take()
        if self.worker is not None:
            self.outbox += self.worker.collect()
            self.worker.close()
        self.worker, self.loaded, self._write_base = None, None, 0.0
        future = self.prefetched.pop(pi, None)
        self.prefetched.clear()  # a prefetch of another checkpoint is stale now
        prefetched = None
        if future is not None:
            try:
                prefetched = future.result()
            except Exception:  # loading again below raises the error where the unit sees it
                prefetched = None
        self._to_free = True  # a load that raises part-way may leave memory behind too
        self.worker = self.factory(spec, settings, with_tokenizer=False, prefetched=prefetched)
        self.loaded = pi
        self.loads += 1
        return self._take()

    def process(
        self, pi: int, spec, settings, task: LanguageTask, pivot_refs: list, prefetch: tuple | None, share: bool
    ):
        import ray

        confirmed = self.warm(pi, spec, settings)
        if prefetch is not None:
            self._prefetch(*prefetch)
        pivot = None
        if pivot_refs and not self.worker.has_pivot(task):  # the pivot's own actor keeps them on its device
            try:
                pivot = ray.get(pivot_refs[0])
            except ray.exceptions.RayError as e:  # lost with its node: the worker reads or computes them
                log.warning("%s: the pivot's shared states are gone (%s)", task.lang, first_line(e))
        result, states = self.worker.process(task, pivot, share_pivot=share)
        result.confirmed = confirmed + self._take() + result.confirmed
        result.write_s, self._write_base = self.worker.write_s - self._write_base, self.worker.write_s
        return result, states

    def _serves(self, spec, settings) -> bool:
        """The loaded worker can run plan(spec, settings) as it is (another intervention of its checkpoint)."""
        return self.worker is not None and getattr(self.worker, "serves", lambda *_: False)(spec, settings)

    def _prefetch(self, pi: int, spec, settings) -> None:
        if (
            pi == self.loaded
            or self.prefetched
            or not hasattr(self.factory, "prefetch")
            or self._serves(spec, settings)
        ):
            return
        self._to_free = True
        self.prefetched[pi] = self._loader.submit(self.factory.prefetch, spec, settings)

    def flush(self) -> list[WriteOutcome]:
        return self._take() + (self.worker.collect() if self.worker is not None else [])

    def reset(self, factory: Any = None) -> dict:
        """Back to a new actor's state, kept for another run of the driver's process: the model and anything
        prefetched dropped (and their memory freed), counters zero, and the next run's worker factory. Writes are all
        confirmed when a run ends. Returns ready()'s answer."""
        import gc

        import torch

        for future in self.prefetched.values():
            future.cancel()
        with contextlib.suppress(Exception):  # a failed prefetch: nothing to drop
            for future in self.prefetched.values():
                future.result()
        if self.worker is not None:
            self.outbox += self.worker.collect()
            self.worker.close()
        for outcome in self.outbox:  # none: a run ends with every write confirmed; never dropped unseen
            if outcome.error:
                log.warning(
                    "%s %s: a write failed after its run ended: %s", outcome.checkpoint, outcome.lang, outcome.error
                )
        self.worker, self.loaded, self.prefetched, self.outbox = None, None, {}, []
        self.loads, self._write_base = 0, 0.0
        self.factory = factory or LanguageWorker
        if self._to_free:  # a full collection (0.15 s with torch and transformers loaded) only where it frees something
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._to_free = False
        return self.ready()
