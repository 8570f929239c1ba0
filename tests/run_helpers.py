"""Running one job from a test: its runs rows, or an error naming the first failed unit."""

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
