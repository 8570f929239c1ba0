"""Running one job from a test: its runs rows, or an error naming the first failed unit; an Actor built in the
test's own process without changing that process for the tests after it."""

from __future__ import annotations

import dataclasses

from neuronxa_ray.config import JobConfig
from neuronxa_ray.execution import RunOptions, run_jobs


def run_job(job: JobConfig, lake_root: str | None = None, progress: bool | None = None, **kwargs) -> list[dict]:
    """One job; returns its runs rows (one per checkpoint that computed). Raises when a unit failed."""
    if lake_root is not None:
        job = dataclasses.replace(job, lake=str(lake_root))
    report = run_jobs([job], RunOptions(progress=progress, **kwargs))
    if report.failed:
        first = report.failed[0]
        raise RuntimeError(
            f"{len(report.failed)} unit(s) failed; first: {first.model} @ {first.checkpoint} {first.lang}: "
            f"{first.error}"
        )
    return report.runs


def in_process_actor(actor_class, *args):
    """An Actor built in the test's own process. Its constructor changes the process for good (torch threads,
    transformers' progress bars and verbosity: what a Ray worker wants); they are put back at once, so that no later
    test in this pytest process sees them changed (conftest's process_state_unchanged checks it)."""
    import torch
    from transformers.utils import logging as hf_logging

    threads, verbosity, bars = torch.get_num_threads(), hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        return actor_class(*args)
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
