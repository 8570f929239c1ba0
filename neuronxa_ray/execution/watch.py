"""Track a training run as it happens: evaluate each new checkpoint once its files have stopped changing.

`neuronxa-ray watch JOB.yaml` checks the job first (its data, languages, pivots and lake: a mistake is one line at
once, not when the first checkpoint arrives), then polls the job's checkpoints (usually `checkpoints: {glob:
"ckpts/checkpoint-*"}`, the step parsed from each name), runs every checkpoint that is new and complete through the
same scheduler as `run`, appends to the lake, and prints each checkpoint's row of the training curve as soon as it
is done. A checkpoint whose evaluation failed is tried again when its files change, and also after a back-off
(doubling up to RETRY_MAX_S) whether or not they do: a lake that was down, or a directory restored with `cp -a`
(the same names, sizes and times), come back without anyone touching the files. It stops on Ctrl-C, SIGTERM, or
once a checkpoint at or past `--until-step` is done; `missing()` says which checkpoints are still not evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from neuronxa_ray.config.job import Checkpoint, JobConfig
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution.kept import keep_actors

log = logging.getLogger(__name__)

RETRY_MAX_S = 600.0  # the longest pause before a failed checkpoint is tried again with unchanged files


def snapshot(path: str) -> tuple | None:
    """(name, size, mtime) of every file below a checkpoint directory; None when it is not a directory (yet)."""
    root = Path(path)
    if not root.is_dir():
        return None
    files = []
    for p in sorted(root.rglob("*")):
        try:
            if p.is_file():
                st = p.stat()
                files.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
        except OSError:  # removed while listed: the next poll sees the change
            continue
    return tuple(files) or None


@dataclasses.dataclass
class Failure:
    """A checkpoint whose evaluation failed: with which files, how often, when it is tried again, and why."""

    snapshot: tuple | None
    tries: int
    retry_at: float
    error: str


@dataclasses.dataclass
class WatchState:
    """What the watcher has seen: last snapshots, the checkpoints evaluated, and those that failed (retried)."""

    snapshots: dict[str, tuple | None] = dataclasses.field(default_factory=dict)
    settled_since: dict[str, float] = dataclasses.field(default_factory=dict)
    evaluated: set[str] = dataclasses.field(default_factory=set)
    failed: dict[str, Failure] = dataclasses.field(default_factory=dict)
    done_steps: list[int] = dataclasses.field(default_factory=list)


def validate(job: JobConfig) -> None:
    """The job's own mistakes, before any waiting: its data and languages, its pivots, its lake (NeuronxaError)."""
    from neuronxa_ray.lake import Lake

    corpus = job.load_corpus()
    if isinstance(job.pivots, list) and set(job.pivots) - set(corpus.languages):
        raise NeuronxaError(
            f"{job.source}: pivots {sorted(set(job.pivots) - set(corpus.languages))} are not among the job's "
            f"languages {corpus.languages}"
        )
    Lake(job.lake).check_writable()


def _snapshot_of(checkpoint: Checkpoint) -> tuple | None:
    return snapshot(checkpoint.model) if Path(checkpoint.model).exists() else ("hub", checkpoint.model)


def ready_checkpoints(job: JobConfig, state: WatchState, settle_s: float, now: float | None = None) -> list[Checkpoint]:
    """New checkpoints whose files are unchanged since the previous poll and for at least settle_s seconds; a failed
    one once its files changed (and settled again) or its back-off is over."""
    now = time.monotonic() if now is None else now
    ready = []
    for checkpoint in job.resolved_checkpoints():
        name = checkpoint.name
        if name in state.evaluated:
            continue
        snap = _snapshot_of(checkpoint)
        if snap is None:
            continue
        if snap != state.snapshots.get(name):
            state.snapshots[name] = snap
            state.settled_since[name] = now
            continue
        failure = state.failed.get(name)
        if failure is not None and failure.snapshot == snap and now < failure.retry_at:
            continue
        if now - state.settled_since[name] >= settle_s:
            ready.append(checkpoint)
    return ready


def _failed(state: WatchState, checkpoint: Checkpoint, error: str, base_s: float, now: float) -> Failure:
    snap = state.snapshots.get(checkpoint.name)
    before = state.failed.get(checkpoint.name)
    tries = before.tries + 1 if before is not None and before.snapshot == snap else 1
    pause = min(base_s * 2 ** (tries - 1), max(RETRY_MAX_S, base_s))
    failure = state.failed[checkpoint.name] = Failure(snap, tries, now + pause, error)
    return failure


def watch(
    job: JobConfig,
    run: Callable[[JobConfig], object],
    report: Callable[[JobConfig, list[Checkpoint]], None],
    interval_s: float = 30.0,
    settle_s: float = 60.0,
    until_step: int | None = None,
    stop: threading.Event | None = None,
    state: WatchState | None = None,
) -> WatchState:
    """Poll until stopped; `run(job)` evaluates a job restricted to one ready checkpoint, `report` prints its row at
    once. A failed checkpoint waits max(interval, settle) seconds, doubling, before it is tried again with the same
    files. Returns the state (see missing())."""
    stop = stop or threading.Event()
    state = state or WatchState()
    retry_s = max(interval_s, settle_s, 1.0)
    while not stop.is_set():
        with keep_actors():  # one poll's checkpoints (a backlog) on the same actors; none held while waiting
            _evaluate(job, run, report, ready_checkpoints(job, state, settle_s), state, retry_s, stop)
        if until_step is not None and any(step >= until_step for step in state.done_steps):
            break
        stop.wait(interval_s)
    return state


def _evaluate(
    job: JobConfig,
    run: Callable[[JobConfig], object],
    report: Callable[[JobConfig, list[Checkpoint]], None],
    ready: list[Checkpoint],
    state: WatchState,
    retry_s: float,
    stop: threading.Event,
) -> None:
    """Evaluate the ready checkpoints one by one, each row printed at once; a failure is tried again later."""
    for checkpoint in ready:
        if stop.is_set():
            break
        log.info("new checkpoint: %s", checkpoint.name)
        try:
            run(dataclasses.replace(job, checkpoints=[checkpoint]))
        except Exception as e:  # no weights yet, a lake that is down, failed units: tried again later
            error = " ".join(str(e).split()) or type(e).__name__
            failure = _failed(state, checkpoint, error, retry_s, time.monotonic())
            log.error(
                "%s: %s (try %d; tried again in %.0fs, or when its files change)",
                checkpoint.name,
                error,
                failure.tries,
                failure.retry_at - time.monotonic(),
            )
            continue
        state.evaluated.add(checkpoint.name)
        state.failed.pop(checkpoint.name, None)
        if checkpoint.step is not None:
            state.done_steps.append(checkpoint.step)
        try:
            report(job, [checkpoint])
        except Exception as e:  # e.g. the lake stopped answering right after: the checkpoint is in it
            log.error("%s: evaluated, but its row could not be read: %s", checkpoint.name, " ".join(str(e).split()))


def missing(job: JobConfig, state: WatchState, until_step: int | None = None) -> list[tuple[str, str]]:
    """(checkpoint, why) of every checkpoint there (at or before until_step) that is not evaluated."""
    out = []
    for checkpoint in job.resolved_checkpoints():
        if checkpoint.name in state.evaluated:
            continue
        if until_step is not None and checkpoint.step is not None and checkpoint.step > until_step:
            continue
        failure = state.failed.get(checkpoint.name)
        out.append((checkpoint.name, failure.error if failure else "not evaluated yet"))
    return out
