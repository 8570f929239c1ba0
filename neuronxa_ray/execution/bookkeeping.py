"""What a run records besides results: a row per attempt of a unit (the lake's `attempts` table, flushed every
ATTEMPTS_FLUSH_S and at the end) and a row per checkpoint that computed (`runs`). Bookkeeping never ends a run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable

from neuronxa_ray import __version__
from neuronxa_ray.execution.state import Unit, now, utc
from neuronxa_ray.lake import SCHEMA_VERSION, Lake
from neuronxa_ray.planning.plan import CheckpointPlan

log = logging.getLogger(__name__)

ATTEMPTS_FLUSH_S = 30.0  # attempts rows reach the lake at least this often


class AttemptLog:
    """Attempts rows of one run, per lake, written in parts (one file per flush)."""

    def __init__(self, run_id: str, answers: Callable[[Lake, bool], bool]) -> None:
        self.run_id, self.answers = run_id, answers
        self.rows: dict[str, list[dict]] = {}
        self.parts: dict[str, int] = {}
        self.lakes: dict[str, Lake] = {}
        self._last_flush = time.monotonic()

    def add(
        self,
        plan: CheckpointPlan,
        lake: Lake,
        unit: Unit,
        status: str,
        error: str | None,
        finished_only: bool = False,
        finished_at: float | None = None,
    ) -> None:
        """One try of a unit. With the worker's own clock when it reported one: started_at when its extraction began,
        extracted_at when its forward passes ended, finished_at when its write ended; else the driver's."""
        t = now()
        result = unit.result  # this attempt's, once it computed (reset when the unit is submitted)
        started = utc(getattr(result, "started_at", None)) if result is not None else None
        row = {
            "run_id": self.run_id,
            "model": plan.job.model_name,
            "checkpoint": plan.checkpoint.name,
            "lang": unit.lang,
            "attempt": max(unit.attempts, 1),
            "node": unit.node or None,
            "device": result.device if result else None,
            "started_at": t if finished_only else (started or unit.started or t),
            "extracted_at": utc(getattr(result, "extracted_at", None)) if result is not None else None,
            "finished_at": utc(finished_at) or t,
            "status": status,
            "error": error,
        }
        self.rows.setdefault(lake.uri, []).append(row)
        self.lakes[lake.uri] = lake

    def flush(self, force: bool) -> None:
        if not force and time.monotonic() - self._last_flush < ATTEMPTS_FLUSH_S:
            return
        self._last_flush = time.monotonic()
        for uri, rows in self.rows.items():
            if rows and not self.answers(self.lakes[uri], force):
                if force:
                    log.warning("%d attempts row(s) of this run not recorded: lake %s does not answer", len(rows), uri)
                continue
            if rows:
                part = self.parts.get(uri, 0)
                try:
                    self.lakes[uri].write_attempts(self.run_id, part, rows)
                except Exception as e:  # bookkeeping must not end a run
                    log.warning("could not write attempts to %s: %s", uri, e)
                    continue
                self.parts[uri] = part + 1
                self.rows[uri] = []


def runs_row(plan: CheckpointPlan, run_id, results, started, n_actors, startup_s, wall_s) -> dict:
    import torch
    import transformers

    job, first = plan.job, results[0]
    n_sent = sum(r.n_sentences for r in results)
    return {
        "run_id": run_id,
        "model": job.model_name,
        "checkpoint": plan.checkpoint.name,
        "revision": plan.checkpoint.revision,
        "step": plan.checkpoint.step,
        "pivot_lang": job.pivot,
        "languages": plan.languages,
        "n_languages": len(plan.languages),
        "n_languages_computed": len(results),
        "n_sentences": len(plan.corpus.ids),
        "n_layers": first.n_layers,
        "d_ff": first.d_ff,
        "d_model": first.d_model,
        "model_type": first.model_type,
        "hook_site": job.hook_site,
        "device": first.device,
        "dtype": first.dtype,
        "num_actors": n_actors,
        "started_at": started,
        "finished_at": now(),
        "wall_s": wall_s,
        "startup_s": startup_s,
        "extract_s": sum(r.extract_s for r in results),
        "write_s": sum(r.write_s for r in results),
        "n_tokens": sum(r.n_tokens for r in results),
        "sentences_per_s": n_sent / max(wall_s - startup_s, 1e-9),
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "config_json": config_json(plan),
    }


class Progress:
    """A bar on a terminal (settled units over all), else a log line per computed unit."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self.total, self.finished = total, 0
        self.bar = tqdm(total=total, unit="lang", disable=not enabled, smoothing=0.1, dynamic_ncols=True)

    def computed(self, plan: CheckpointPlan, unit: Unit, result, node: str) -> None:
        self.finished += 1
        self.bar.set_postfix_str(f"{unit.lang} @ {plan.checkpoint.name}", refresh=False)
        if self.bar.disable:
            log.info(
                "[%d/%d] %s %s: %d sentences, %d tokens in %.1fs on %s (attempt %d)",
                *(self.finished, self.total, plan.label, unit.lang, result.n_sentences, result.n_tokens),
                *(result.extract_s, node, unit.attempts),
            )

    def settled(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def code_version() -> str:
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(__file__),
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def config_json(plan: CheckpointPlan) -> str:
    return json.dumps(
        {**plan.job.to_dict(), "max_length": plan.max_length, "fingerprint": plan.fingerprint},
        default=str,
        sort_keys=True,
    )
