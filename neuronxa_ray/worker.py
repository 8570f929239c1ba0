"""One model, many languages: extract states, compare with the pivot on the device, write the lake.

LanguageWorker knows nothing of Ray or scheduling; execution.py wraps it in an actor. The same worker runs in a
unit test. A language's Parquet files are written in a background thread while the next language runs; the write
is confirmed (WriteOutcome) by the next `process` call or by `collect()`, so the scheduler knows exactly which
languages are safely in the lake when an actor dies.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from neuronxa_ray.extraction import METHODS, StateExtractor
from neuronxa_ray.lake import Lake, matches_table, neuron_counts_table, similarity_table, states_table
from neuronxa_ray.models import LoadedModel, ModelSpec, load_model, move_to_device
from neuronxa_ray.scoring import cosine_matrices, match_stats

log = logging.getLogger(__name__)


@dataclass
class LanguageTask:
    model_name: str
    checkpoint: str
    pivot: str
    lang: str
    sentence_ids: list[str]
    texts: list[str]
    fingerprint: str
    token_ids: list[list[int]] | None = None  # tokenized by the driver; else the worker tokenizes texts
    checkpoint_fingerprint: str = ""  # shared by every language of the checkpoint run with the same settings
    run_id: str = ""

    @property
    def is_pivot(self) -> bool:
        return self.lang == self.pivot


@dataclass
class LanguageResult:
    lang: str
    n_sentences: int
    n_tokens: int
    extract_s: float
    write_s: float
    n_layers: int
    d_ff: int
    d_model: int
    device: str = ""
    dtype: str = ""
    model_type: str = ""
    confirmed: list[WriteOutcome] = field(default_factory=list)  # earlier languages whose writes finished
    started_at: float = 0.0  # epoch seconds on the worker's clock: the language's extraction began
    extracted_at: float = 0.0  # its forward passes and matching ended (its write then runs in the background)


@dataclass(frozen=True)
class WriteOutcome:
    """A background write that finished: the language is in the lake (error None) or it is not (error)."""

    model_name: str
    checkpoint: str
    lang: str
    error: str | None = None
    finished_at: float | None = None  # epoch seconds on the worker's clock: the write (files, then marker) ended


PivotStates = dict[str, np.ndarray]  # method -> [n, layers, dim] float32


@dataclass(frozen=True)
class WorkerSettings:
    lake: str | Lake  # a Lake carries the driver's object-store settings to workers; a str uses the worker's
    batch_size: int = 16
    max_length: int | None = 512
    state_dtype: str = "float32"
    store_states: bool = True
    store_similarity: bool = False  # the full O(n^2) cosine matrices too; `matches` (O(n)) is always written


class LanguageWorker:
    @staticmethod
    def prefetch(spec: ModelSpec, settings: WorkerSettings) -> LoadedModel:
        """Load the weights into host memory (in the dtype the device will use) while another model computes."""
        return load_model(spec, with_tokenizer=False, host_only=True)

    def __init__(
        self,
        spec: ModelSpec,
        settings: WorkerSettings,
        with_tokenizer: bool = True,
        prefetched: LoadedModel | None = None,
    ) -> None:
        t0 = time.perf_counter()
        if prefetched is not None:
            self.lm = move_to_device(prefetched, spec)
        else:
            self.lm = load_model(spec, with_tokenizer=with_tokenizer)
        self.load_s = time.perf_counter() - t0
        self.settings = settings
        self.lake = Lake(settings.lake)
        self.extractor = StateExtractor(self.lm, settings.batch_size, settings.max_length)
        self._pivot_id: int | None = None
        self._pivot: dict[str, torch.Tensor] = {}
        # Parquet writes run beside the next language's forward passes (pyarrow releases the GIL while it
        # compresses); at most one is pending, and flush() waits for it.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer")
        self._pending: tuple[LanguageTask, Future] | None = None
        self.write_s = 0.0

    def close(self) -> None:
        """Release the model's hooks (its memory goes with the last reference)."""
        self.extractor.close()

    def describe(self) -> dict:
        return {
            "device": str(self.lm.device),
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "model_type": self.lm.model_type,
            "n_layers": len(self.lm.blocks),
            "load_s": self.load_s,
        }

    def _use_pivot(self, pivot: PivotStates) -> None:
        """Keep the pivot's states on the device; the same object is reused across languages."""
        if self._pivot_id != id(pivot):
            self._pivot = {m: torch.from_numpy(np.array(a)).to(self.lm.device) for m, a in pivot.items()}
            self._pivot_id = id(pivot)

    def process(
        self, task: LanguageTask, pivot: PivotStates | None = None
    ) -> tuple[LanguageResult, PivotStates | None]:
        """Extract one language and write its tables. Returns the states too when it is the pivot."""
        t0, started_at = time.perf_counter(), time.time()
        if task.token_ids is not None:
            states = self.extractor.extract_ids(task.token_ids)
        else:
            states = self.extractor.extract(task.texts)
        matrices: dict[str, np.ndarray] = {}
        matches: dict[str, dict[str, np.ndarray]] = {}
        if not task.is_pivot:
            if pivot is None:
                raise ValueError(f"language {task.lang!r} needs the pivot {task.pivot!r} states")
            self._use_pivot(pivot)
            for method in METHODS:
                p = self._pivot[method]
                if p.shape[0] != len(task.texts):
                    raise ValueError(f"pivot has {p.shape[0]} sentences, {task.lang!r} has {len(task.texts)}")
                C = cosine_matrices(p, states.state(method))
                matches[method] = match_stats(C).numpy()
                if self.settings.store_similarity:
                    matrices[method] = C.cpu().numpy()
        host = {m: states.state(m).float().cpu().numpy() for m in METHODS}
        for method, arr in host.items():
            bad = int(np.isnan(arr).any(axis=-1).sum())
            if bad:  # such a state never hits; say so rather than let a score drop silently
                log.warning("%s: %d %s states hold NaN (the model produced NaN activations)", task.lang, bad, method)
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize()
        extract_s = time.perf_counter() - t0
        counters = (states.n_active.cpu().numpy(), states.abs_sum.cpu().numpy(), states.n_tokens, states.token_counts)
        confirmed = self.collect()  # the previous language's files first: at most one write in flight
        self._pending = (task, self._writer.submit(self._write, task, host, counters, (matches, matrices)))
        result = LanguageResult(
            lang=task.lang,
            n_sentences=len(task.texts),
            n_tokens=states.n_tokens,
            extract_s=extract_s,
            write_s=0.0,  # written in the background: see flush()
            n_layers=host["nas"].shape[1],
            d_ff=host["nas"].shape[2],
            d_model=host["hidden"].shape[2],
            device=str(self.lm.device),
            dtype=str(self.lm.dtype).removeprefix("torch."),
            model_type=self.lm.model_type,
            confirmed=confirmed,
            started_at=started_at,
            extracted_at=started_at + extract_s,
        )
        return result, (host if task.is_pivot else None)

    def collect(self) -> list[WriteOutcome]:
        """Wait for the pending write, if any, and say how it ended (never raises)."""
        if self._pending is None:
            return []
        (task, pending), self._pending = self._pending, None
        try:
            ended = pending.result()
            return [WriteOutcome(task.model_name, task.checkpoint, task.lang, finished_at=ended)]
        except Exception as e:
            error = str(e).splitlines()[0] or repr(e)
            ended = getattr(e, "finished_at", None)
            return [WriteOutcome(task.model_name, task.checkpoint, task.lang, error, finished_at=ended)]

    def flush(self) -> float:
        """Wait for the pending write (raising its error, if any); return the seconds spent writing so far."""
        for outcome in self.collect():
            if outcome.error:
                raise RuntimeError(outcome.error)
        return self.write_s

    def _write(self, task: LanguageTask, host: dict, counters: tuple, pairs: tuple[dict, dict]) -> float:
        """Write a language's tables; returns when the write ended (epoch seconds), also carried by its error."""
        t0 = time.perf_counter()
        try:
            self._write_tables(task, host, counters, pairs)
        except Exception as e:
            error = RuntimeError(f"writing language {task.lang!r} to the lake failed: {e}")
            error.finished_at = time.time()
            raise error from e
        self.write_s += time.perf_counter() - t0
        return time.time()

    def _write_tables(self, task: LanguageTask, host: dict, counters: tuple, pairs: tuple[dict, dict]) -> None:
        """All of a language's tables, then its done marker (last: a rerun redoes a language cut short)."""
        lake, key = self.lake, (task.model_name, task.checkpoint)
        n_active, abs_sum, n_tokens, token_counts = counters
        matches, matrices = pairs
        written = []
        if self.settings.store_states:
            table = states_table(*key, task.lang, task.sentence_ids, token_counts, host, self.settings.state_dtype)
            path = lake.language_file("sentence_states", *key, task.lang)
            written.append(lake.write("sentence_states", table, path, state_dtype=self.settings.state_dtype))
        counts = neuron_counts_table(*key, task.lang, n_active, abs_sum, n_tokens)
        written.append(lake.write("neuron_counts", counts, lake.language_file("neuron_counts", *key, task.lang)))
        if matches:
            found = matches_table(*key, task.pivot, task.lang, matches)
            written.append(lake.write("matches", found, lake.language_file("matches", *key, task.lang, task.pivot)))
        if matrices:
            sim = similarity_table(*key, task.pivot, task.lang, matrices)
            written.append(lake.write("similarity", sim, lake.language_file("similarity", *key, task.lang, task.pivot)))
        info = {
            "n_sentences": len(task.texts),
            "checkpoint_fingerprint": task.checkpoint_fingerprint,
            "run_id": task.run_id,
            # dtype/device "auto" resolve where the actor runs: a language must match its pivot's precision
            "precision": f"{self.lm.device.type}/{str(self.lm.dtype).removeprefix('torch.')}",
        }
        lake.mark_done(*key, task.pivot, task.lang, task.fingerprint, info, files=written)
