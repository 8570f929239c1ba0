"""Track a training run as it happens: evaluate each new checkpoint once its files have stopped changing.

`neuronxa-ray watch JOB.yaml` polls the job's checkpoints (usually `checkpoints: {glob: "ckpts/checkpoint-*"}`,
the step parsed from each name), runs every checkpoint that is new and complete through the same scheduler as
`run`, appends to the lake, and prints the new row of the training curve. It stops on Ctrl-C or once a checkpoint
at or past `--until-step` is done.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from neuronxa_ray.config import Checkpoint, JobConfig
from neuronxa_ray.errors import NeuronxaError

log = logging.getLogger(__name__)


def snapshot(path: str) -> tuple | None:
    """(name, size, mtime) of every file below a checkpoint directory; None when it is not a directory (yet)."""
    root = Path(path)
    if not root.is_dir():
        return None
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            files.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return tuple(files) or None


@dataclasses.dataclass
class WatchState:
    """What the watcher has seen: last snapshots, and the checkpoints already evaluated (or given up on)."""

    snapshots: dict[str, tuple | None] = dataclasses.field(default_factory=dict)
    settled_since: dict[str, float] = dataclasses.field(default_factory=dict)
    evaluated: set[str] = dataclasses.field(default_factory=set)
    failed: dict[str, tuple | None] = dataclasses.field(default_factory=dict)  # retried once its files change


def ready_checkpoints(job: JobConfig, state: WatchState, settle_s: float, now: float | None = None) -> list[Checkpoint]:
    """New checkpoints whose files are unchanged since the previous poll and for at least settle_s seconds."""
    now = time.monotonic() if now is None else now
    ready = []
    for checkpoint in job.resolved_checkpoints():
        if checkpoint.name in state.evaluated:
            continue
        snap = snapshot(checkpoint.model) if Path(checkpoint.model).exists() else ("hub", checkpoint.model)
        if snap is None or state.failed.get(checkpoint.name) == snap:
            continue
        if snap != state.snapshots.get(checkpoint.name):
            state.snapshots[checkpoint.name] = snap
            state.settled_since[checkpoint.name] = now
            continue
        if now - state.settled_since[checkpoint.name] >= settle_s:
            ready.append(checkpoint)
    return ready


def watch(
    job: JobConfig,
    run: Callable[[JobConfig], object],
    report: Callable[[JobConfig, list[Checkpoint]], None],
    interval_s: float = 30.0,
    settle_s: float = 60.0,
    until_step: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Poll until stopped; `run(job)` evaluates a job restricted to the ready checkpoints, `report` prints them.
    Returns how many checkpoints were evaluated."""
    stop = stop or threading.Event()
    state = WatchState()
    done_steps: list[int] = []
    while not stop.is_set():
        ready = ready_checkpoints(job, state, settle_s)
        if ready:
            log.info("new checkpoint(s): %s", ", ".join(c.name for c in ready))
            evaluated = []
            for checkpoint in ready:
                try:
                    run(dataclasses.replace(job, checkpoints=[checkpoint]))
                except NeuronxaError as e:  # e.g. no weights yet: say so, retry when its files change
                    log.error("%s: %s (retried when its files change)", checkpoint.name, e)
                    state.failed[checkpoint.name] = state.snapshots[checkpoint.name]
                    continue
                evaluated.append(checkpoint)
            state.evaluated.update(c.name for c in evaluated)
            done_steps += [c.step for c in evaluated if c.step is not None]
            if evaluated:
                report(job, evaluated)
        if until_step is not None and any(step >= until_step for step in done_steps):
            break
        stop.wait(interval_s)
    return len(state.evaluated)
