"""Execution: run a job's languages through extractor actors on Ray (the only module that imports Ray).

Local Ray starts on demand; set RAY_ADDRESS (or run under `ray job submit`) to use an existing cluster. Nothing
else in the package knows where it runs.

Why plain actors rather than Ray Data's map_batches: the unit of work is a whole language, not a batch. Its
per-neuron counters accumulate across its batches on one device, and its cosine matrices against the pivot need
all of its sentences and the pivot's states together on that device. With map_batches a language's batches would
scatter across actors and need a second, shuffling reduction stage that ships per-sentence states around; with
actors each language streams through one model and only summaries leave it. The pivot is extracted first and its
states go to every actor once, through the object store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from neuronxa_ray import __version__
from neuronxa_ray.config import Checkpoint, JobConfig
from neuronxa_ray.lake import SCHEMA_VERSION, Lake, slug
from neuronxa_ray.readers import ParallelCorpus
from neuronxa_ray.worker import LanguageTask, LanguageWorker, WorkerSettings

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # per actor: one running, one queued, so an actor never waits for the driver


def fingerprint(job: JobConfig, checkpoint: Checkpoint, corpus: ParallelCorpus) -> str:
    """Everything that changes a language's output; a completed language is skipped only if this matches."""
    material = {
        "checkpoint": dataclasses.asdict(checkpoint),
        "gguf_file": job.gguf_file,
        "hook_site": job.hook_site,
        "ffn_module": job.ffn_module,
        "dtype": job.dtype,
        "max_length": job.max_length,
        "state_dtype": job.state_dtype,
        "store_states": job.store_states,
        "ids": corpus.ids,
        "pivot_text": corpus.sentences[job.pivot],
        "schema": "1",
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _lang_fingerprint(base: str, texts: list[str]) -> str:
    return hashlib.sha256((base + "\n".join(texts)).encode()).hexdigest()[:16]


def _progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, unit="sent", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _code_version() -> str:
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


def _init_ray(address: str | None):
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {}
        if not address:
            # A local Ray we start ourselves: the actors do the work, so they should not run at a lower priority
            # (Ray's default worker niceness is 15) than Ray's own housekeeping processes on a busy machine.
            kwargs["_system_config"] = {"worker_niceness": 0}
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=False,
            **kwargs,
        )
    return ray


def _actor_resources(ray, job: JobConfig) -> tuple[int, dict[str, float]]:
    """(number of actors, ray options of each): one per GPU when the cluster has GPUs, else one CPU actor."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if job.device in ("auto",) or job.device.startswith("cuda") else 0
    if gpus:
        n = job.num_actors or gpus
        return n, {"num_gpus": 1, "num_cpus": 1}
    n = job.num_actors or 1
    cpus = max(1, int(resources.get("CPU", 1)) // n)
    return n, {"num_gpus": 0, "num_cpus": cpus}


class _ActorBody:
    """The actor: a LanguageWorker plus pivot-state resolution from the object store."""

    def __init__(self, spec, settings: WorkerSettings, threads: int) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its bars would interleave with the driver's through Ray's log stream
        torch.set_num_threads(max(1, threads))
        self.worker = LanguageWorker(spec, settings, with_tokenizer=False)  # the driver tokenizes

    def describe(self) -> dict:
        return self.worker.describe()

    def process(self, task: LanguageTask, pivot_refs: list) -> tuple:
        import ray

        pivot = ray.get(pivot_refs[0]) if pivot_refs else None
        return self.worker.process(task, pivot)

    def flush(self) -> float:
        return self.worker.flush()


def run_job(
    job: JobConfig,
    lake_root: str | None = None,
    progress: bool | None = None,
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Run every checkpoint of the job; return the runs rows written (one per checkpoint that computed)."""
    lake = Lake(lake_root or job.lake)
    corpus = job.load_corpus()
    rows = []
    for checkpoint in job.resolved_checkpoints():
        row = _run_checkpoint(job, checkpoint, corpus, lake, progress, ray_address)
        if row is not None:
            rows.append(row)
    return rows


def _run_checkpoint(job, checkpoint, corpus, lake, progress, ray_address) -> dict | None:
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    model_name = job.model_name
    base = fingerprint(job, checkpoint, corpus)
    langs = [job.pivot] + [lang for lang in corpus.languages if lang != job.pivot]
    tasks = {
        lang: LanguageTask(
            model_name,
            checkpoint.name,
            job.pivot,
            lang,
            corpus.ids,
            corpus.sentences[lang],
            _lang_fingerprint(base, corpus.sentences[lang]),
        )
        for lang in langs
    }
    todo = [
        lang
        for lang in langs
        if not lake.is_done(model_name, checkpoint.name, job.pivot, lang, tasks[lang].fingerprint)
    ]
    if not todo:
        log.info(
            "%s @ %s: all %d languages already in the lake; nothing to do",
            model_name,
            checkpoint.name,
            len(langs),
        )
        return None
    skipped = len(langs) - len(todo)
    if skipped:
        log.info(
            "%s @ %s: %d languages already complete, %d to go",
            model_name,
            checkpoint.name,
            skipped,
            len(todo),
        )

    from neuronxa_ray.models import load_tokenizer, materialize_gguf, needs_conversion, resolve_source, tokenize

    spec = job.model_spec(checkpoint)
    if needs_conversion(spec):  # once, here, rather than in every actor at the same time
        log.warning("first use of %s: de-quantising the GGUF once into the cache (a minute or two)", spec.model)
        materialize_gguf(*resolve_source(spec))
    # The tokenizer loads (seconds, for large vocabularies) while Ray starts and the actors load the model.
    tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
    tokenizer_future = tokenizer_pool.submit(load_tokenizer, spec)
    tokenizer_pool.shutdown(wait=False)
    ray = _init_ray(ray_address)
    n_actors, options = _actor_resources(ray, job)
    n_actors = min(n_actors, len(todo))
    settings = WorkerSettings(
        str(lake.root), job.batch_size, job.max_length, job.state_dtype, job.store_states, job.store_similarity
    )
    Actor = ray.remote(**options)(_ActorBody)
    actors = [Actor.remote(spec, settings, int(options["num_cpus"])) for _ in range(n_actors)]
    try:
        # Tokenize here while the actors load the model: CPU work off the accelerators, overlapped with start-up.
        tokenizer = tokenizer_future.result()
        for lang in todo:
            tasks[lang].token_ids = tokenize(tokenizer, tasks[lang].texts, job.max_length)
        info = ray.get([a.describe.remote() for a in actors])[0]
        startup_s = time.perf_counter() - t_start
        log.info("%d actor(s) ready on %s in %.1fs", n_actors, info["device"], startup_s)

        # The pivot first: its states (from this run, or from the lake when complete) feed every other language.
        results = []
        if job.pivot in todo:
            result_ref, pivot_ref = actors[0].process.options(num_returns=2).remote(tasks[job.pivot], [])
            todo.remove(job.pivot)
            pending_pivot = [(result_ref, actors[0], job.pivot)]
        else:
            if not job.store_states:
                raise RuntimeError("pivot complete but its states were not stored (store_states: false); rerun it")
            pivot_ref = ray.put(lake.read_states(model_name, checkpoint.name, job.pivot))
            pending_pivot = []

        bar = _progress(len(corpus.ids) * (len(todo) + len(pending_pivot)), progress)
        queue = deque(todo)
        in_flight: dict = {}  # ref -> (actor, lang)
        load = {id(a): 0 for a in actors}
        for ref, actor, lang in pending_pivot:
            in_flight[ref] = (actor, lang)
            load[id(actor)] += 1

        def submit() -> None:
            for actor in actors:
                while queue and load[id(actor)] < MAX_IN_FLIGHT:
                    lang = queue.popleft()
                    ref = actor.process.options(num_returns=2).remote(tasks[lang], [pivot_ref])[0]
                    in_flight[ref] = (actor, lang)
                    load[id(actor)] += 1

        submit()
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            actor, lang = in_flight.pop(done[0])
            load[id(actor)] -= 1
            try:
                result = ray.get(done[0])
            except Exception as e:  # a failed language stops the run; completed ones stay in the lake
                raise RuntimeError(f"{model_name} @ {checkpoint.name}: language {lang!r} failed: {e}") from e
            results.append(result)
            bar.update(result.n_sentences)
            bar.set_postfix_str(lang)
            log.info(
                "%s: %d sentences, %d tokens in %.1fs",
                lang,
                result.n_sentences,
                result.n_tokens,
                result.extract_s,
            )
            submit()
        try:  # every language's files and marker are on disk before the run counts as finished
            write_s = sum(ray.get([a.flush.remote() for a in actors]))
        except Exception as e:
            raise RuntimeError(f"{model_name} @ {checkpoint.name}: {e}") from e
        bar.close()
    finally:
        for actor in actors:
            ray.kill(actor)

    finished = dt.datetime.now(dt.timezone.utc)
    wall_s = time.perf_counter() - t_start
    row = _runs_row(job, checkpoint, corpus, info, results, started, finished, wall_s, startup_s, n_actors, len(langs))
    row["write_s"] = write_s
    run_file = lake.root / "runs" / f"model={slug(model_name)}" / f"checkpoint={slug(checkpoint.name)}"
    lake.write("runs", {k: [v] for k, v in row.items()}, run_file / f"{row['run_id']}.parquet")
    return row


def _runs_row(job, checkpoint, corpus, info, results, started, finished, wall_s, startup_s, n_actors, n_langs) -> dict:
    import torch
    import transformers

    first = results[0]
    n_sent = sum(r.n_sentences for r in results)
    return {
        "run_id": f"{started.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}",
        "model": job.model_name,
        "checkpoint": checkpoint.name,
        "revision": checkpoint.revision,
        "step": checkpoint.step,
        "pivot_lang": job.pivot,
        "languages": corpus.languages,
        "n_languages": n_langs,
        "n_languages_computed": len(results),
        "n_sentences": len(corpus.ids),
        "n_layers": first.n_layers,
        "d_ff": first.d_ff,
        "d_model": first.d_model,
        "model_type": info["model_type"],
        "hook_site": job.hook_site,
        "device": info["device"],
        "dtype": info["dtype"],
        "num_actors": n_actors,
        "started_at": started,
        "finished_at": finished,
        "wall_s": wall_s,
        "startup_s": startup_s,
        "extract_s": sum(r.extract_s for r in results),
        "write_s": sum(r.write_s for r in results),
        "n_tokens": sum(r.n_tokens for r in results),
        "sentences_per_s": n_sent / max(wall_s - startup_s, 1e-9),
        "code_version": _code_version(),
        "schema_version": SCHEMA_VERSION,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "config_json": json.dumps(job.to_dict(), default=str, sort_keys=True),
    }
