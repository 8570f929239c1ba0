"""The driver of a run: plan every job, prepare what actors need (GGUF conversion once, token ids in the driver),
start Ray and the pool, run the scheduler under this run's leases, then record runs rows and compute the pairs.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from neuronxa_ray.config.job import JobConfig
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution.bookkeeping import runs_row
from neuronxa_ray.execution.environment import check_local_devices, init_ray, pool_shape
from neuronxa_ray.execution.kept import keep_actors
from neuronxa_ray.execution.pool import ActorPool
from neuronxa_ray.execution.scheduler import Scheduler
from neuronxa_ray.execution.state import FailedUnit, RunOptions, RunReport, first_line, now
from neuronxa_ray.lake import Lake
from neuronxa_ray.planning.plan import CheckpointPlan, plan_jobs

log = logging.getLogger(__name__)


def run_jobs(jobs: list[JobConfig], options: RunOptions | None = None) -> RunReport:
    """Plan every job, run what is missing on one actor pool, record runs and attempts; then, for jobs with
    interventions, the checkpoints again with their neuron sets switched off (a second phase: the sets come from
    the first phase's results). Raises NeuronxaError before Ray starts (or any model loads) when an input is bad."""
    with keep_actors():  # the second phase (interventions) runs on the first phase's actors
        return _run_jobs(jobs, options or RunOptions())


def _run_jobs(jobs: list[JobConfig], options: RunOptions) -> RunReport:
    t_start, started = time.perf_counter(), now()
    run_id = f"{started.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    check_local_devices(jobs, options)
    for job in jobs:
        Lake(job.lake).check_writable()
    all_plans = plan_jobs(jobs, options.force, options.recompute)
    report = run_phase(all_plans, options, run_id, started, t_start)
    if any(p.job.interventions for p in all_plans):
        from neuronxa_ray.execution.interventions import plan_interventions

        variants, errors = plan_interventions(all_plans, report.failed, options.force)
        more = run_phase(variants, options, run_id, now(), time.perf_counter())
        report.runs += more.runs
        report.failed += errors + more.failed
        report.n_units += more.n_units
        report.loads += more.loads
        report.lakes_down = sorted(set(report.lakes_down) | set(more.lakes_down))
    report.wall_s = time.perf_counter() - t_start
    return report


def run_phase(all_plans: list[CheckpointPlan], options: RunOptions, run_id: str, started, t_start: float) -> RunReport:
    """Run what the plans still miss on one actor pool, then record runs rows and compute the pairs. started and
    t_start: when the phase began (its runs rows' start-up and wall times count from there)."""
    plans = [p for p in all_plans if p.todo]
    tidy_finished(all_plans, run_id)
    if not plans:
        log.debug("every language of every checkpoint is already in the lake; nothing to do")  # the CLI says it
        failed = compute_all_pairs(all_plans)
        return RunReport(run_id, [], failed, 0, 0, time.perf_counter() - t_start)
    first_tokenizer = prepare(plans)
    ray = init_ray(options.ray_address)
    pool = make_pool(ray, plans, options)
    scheduler = Scheduler(ray, pool, plans, run_id, options.progress)
    scheduler.leases.acquire()
    finished = False
    try:
        pool.launch()
        scheduler.dispatch.prewarm()
        scheduler.dispatch.tokens = tokenize_all(plans, first_tokenizer)
        pool.wait_placed(scheduler.leases.renew_due)  # leases kept alive over a long start-up
        startup_s = time.perf_counter() - t_start
        log.info("%d actor(s) placed in %.1fs; %d unit(s) to run", pool.size, startup_s, len(scheduler.units))
        scheduler.run()
        loads = sum(s.loads for s in pool.slots)
        finished = True
    finally:
        pool.shutdown(keep=finished)  # idle actors go to the open keep_actors() block, if any
        scheduler.leases.release(tidy=scheduler.cut if finished else ())  # every write settled: a lost actor's cut
    runs = record_runs(scheduler, run_id, started, startup_s, time.perf_counter() - t_start)
    failed = scheduler.failed_units()
    failed += compute_all_pairs(all_plans, failed)
    wall = time.perf_counter() - t_start
    return RunReport(run_id, runs, failed, len(scheduler.units), loads, wall, scheduler.watch.down())


def prepare(plans: list[CheckpointPlan]) -> Future:
    """Before Ray starts: warn about remote code, de-quantise GGUF files once (rather than in every actor at the
    same time), and start loading the first tokenizer (seconds, for large vocabularies) in the background."""
    from neuronxa_ray.model.gguf import materialize_gguf, needs_conversion
    from neuronxa_ray.model.load import load_tokenizer
    from neuronxa_ray.model.resolve import resolve_source

    for job in {id(p.job): p.job for p in plans}.values():
        if job.trust_remote_code:
            log.warning("%s: trust_remote_code is true: Python code from the model directory will run", job.source)
    for plan in plans:
        if needs_conversion(plan.spec):
            log.warning(
                "first use of %s: de-quantising the GGUF once (34 s for Gemma 3 270M on 2 cores)",
                plan.spec.model,
            )
            materialize_gguf(*resolve_source(plan.spec))
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
    first_tokenizer = loader.submit(load_tokenizer, plans[0].spec)
    loader.shutdown(wait=False)
    return first_tokenizer


def make_pool(ray, plans: list[CheckpointPlan], options: RunOptions) -> ActorPool:
    """One pool serves every job: their actors must be alike; no more actors than units."""
    size, ray_options, threads = pool_shape(ray, plans[0].job)
    for plan in plans[1:]:
        if pool_shape(ray, plan.job)[1:] != (ray_options, threads):
            raise NeuronxaError(
                f"{plan.job.source} needs other actors than {plans[0].job.source} (device, gpus_per_actor or "
                "num_actors differ): run them separately"
            )
    size = min(size, sum(len(p.todo) for p in plans))
    timeout_s = min(p.job.placement_timeout_s for p in plans)
    return ActorPool(ray, size, ray_options, threads, options.worker_factory, timeout_s)


def record_runs(scheduler: Scheduler, run_id: str, started, startup_s: float, wall_s: float) -> list[dict]:
    """A runs row per checkpoint that computed something (not written to a lake that does not answer)."""
    runs = []
    for i, plan in enumerate(scheduler.plans):
        done = [u for u in scheduler.units if u.plan == i and u.status == "done" and u.result is not None]
        if not done:
            continue
        row = runs_row(plan, run_id, [u.result for u in done], started, scheduler.pool.size, startup_s, wall_s)
        try:
            if not scheduler.watch.answers(scheduler.lakes[i]):
                raise NeuronxaError(f"lake {plan.job.lake} does not answer")
            scheduler.lakes[i].write_run(row)
        except Exception as e:  # bookkeeping must not end a run: its languages are in the lake
            log.warning("%s: could not write the runs row: %s", plan.label, first_line(e))
        runs.append(row)
    return runs


def tidy_finished(plans: list[CheckpointPlan], run_id: str) -> None:
    """Checkpoints with nothing left to do get no lease from this run, so nothing else would tidy them: remove what
    dead runs left there (stale leases, temporary files) now; one a live run holds is left alone."""
    for plan in plans:
        if plan.todo:
            continue  # tidied under this run's lease once it holds it (RunLeases.acquire)
        try:
            Lake(plan.job.lake).tidy(*plan.key, run_id)
        except Exception as e:  # housekeeping must not end a run
            log.warning("%s: could not tidy what earlier runs left: %s", plan.label, first_line(e))


def compute_all_pairs(plans: list[CheckpointPlan], failed: list[FailedUnit] = ()) -> list[FailedUnit]:
    """Every (pivot, language) pair of the checkpoints whose job asks for `pivots`: a BLAS pass over the stored
    states in the driver, once each checkpoint's languages are all in the lake (each ran its forward pass once)."""
    from neuronxa_ray.execution.pairs import compute_pairs

    broken = {(f.model, f.checkpoint) for f in failed}
    out = []
    for plan in plans:
        if plan.job.pivots is None or plan.key in broken:
            continue
        try:
            rows = compute_pairs(Lake(plan.job.lake), *plan.key, plan.languages, plan.job.pivots, base_pivot=plan.pivot)
        except Exception as e:  # e.g. the lake stopped answering: the pairs fail, not the run
            out.append(FailedUnit(*plan.key, "(pairs)", 1, first_line(e)))
            continue
        if rows:
            log.info("%s: every language pair computed (%d match rows)", plan.label, rows)
    return out


def tokenize_all(plans: list[CheckpointPlan], first_tokenizer: Future | None) -> dict[tuple[int, str], list]:
    """Token ids of every unit, in the driver (CPU work off the accelerators); one tokenizer per distinct source."""
    from neuronxa_ray.model.load import load_tokenizer, tokenize

    tokenizers: dict[str, Any] = {}
    by_text: dict[tuple[str, str, int | None], list] = {}
    out = {}
    for i, plan in enumerate(plans):
        key = f"{plan.resolved.source}|{plan.resolved.identity.get('commit', '')}|{plan.resolved.gguf_file}"
        if key not in tokenizers:
            if first_tokenizer is not None:
                tokenizers[key], first_tokenizer = first_tokenizer.result(), None
            else:
                tokenizers[key] = load_tokenizer(plan.spec)
        for lang in dict.fromkeys([plan.pivot, *plan.todo]):  # the pivot's ids too: an actor may compute it
            cache_key = (key, lang, plan.max_length)
            if cache_key not in by_text:
                by_text[cache_key] = tokenize(
                    tokenizers[key], plan.corpus.sentences[lang], plan.max_length, f"{plan.label} {lang}"
                )
            out[(i, lang)] = by_text[cache_key]
    return out
