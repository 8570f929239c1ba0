"""One model, many languages: extract states, compare with the pivot on the device, write the lake.

LanguageWorker knows nothing of Ray or scheduling; execution.actor wraps it in an actor. The same worker runs in a
unit test. What leaves the device is only what is kept: per-sentence matches (O(n x layers)) and per-neuron
counters (O(layers x d_ff)) always, the states themselves only when they are stored (or shared as the pivot's),
through pinned buffers on a side stream on CUDA. A language's Parquet files are written in background threads
(at most WRITES_IN_FLIGHT languages at once) while the next language runs; each write is confirmed
(WriteOutcome) by a later `process` call or by `collect()`, so the scheduler knows exactly which languages are
safely in the lake when an actor dies.

The pivot's states stay on the device of the actor that computed them, as float32. Another actor gets them
through Ray's object store (actor to actor, never through the driver), reads them from the lake, or, when
neither has them, computes them itself from the pivot's token ids without writing them: the pivot is one
language of many, and the scores never depend on which of these happened.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from neuronxa_ray.compute.extraction import StateExtractor
from neuronxa_ray.compute.interventions import LMHead, NeuronSet, NLLRecorder, load_lm_head, zeroed
from neuronxa_ray.compute.matching import cosine_matrices, match_stats
from neuronxa_ray.lake import (
    Lake,
    matches_table,
    neuron_counts_table,
    perplexity_table,
    similarity_table,
    states_table,
)
from neuronxa_ray.methods import METHODS
from neuronxa_ray.model.load import LoadedModel, load_model, move_to_device
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.worker.host import HostCopy
from neuronxa_ray.worker.writer import commit_unit

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
    pivot_token_ids: list[list[int]] | None = None  # to compute the pivot here when no one hands its states over
    pivot_in_lake: bool = False  # the pivot's float32 states are in the lake: read them rather than compute
    perplexity: bool = False  # also the language model's NLL per sentence, from the same forward pass
    # per block, the neurons switched off in every pass of this task (a pivot it computes too)
    neurons: tuple[tuple[int, ...], ...] | None = None
    base_model: str = ""  # for the perplexity table: the model as the job names it, and the intervention's label
    intervention: str = "none"
    switched_off: str | None = None

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
    host_bytes: int = 0  # bytes copied off the device for this language (what is kept, nothing else)
    nan_states: dict[str, int] = field(default_factory=dict)  # method -> sentences whose state holds NaN
    pivot_source: str = ""  # non-pivot languages: where the pivot's states came from (cache|shared|lake|computed)
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
WRITES_IN_FLIGHT = 2  # languages being written at once; more waits (host memory stays bounded)


@dataclass(frozen=True)
class WorkerSettings:
    lake: str | Lake  # a Lake carries the driver's object-store settings to workers; a str uses the worker's
    batch_size: int = 16
    max_length: int | None = 512
    state_dtype: str = "float16"  # of stored states; the pivot's are stored as float32 (see the module docstring)
    store_states: bool = True
    store_similarity: bool = False  # the full O(n^2) cosine matrices too; `matches` (O(n)) is always written
    batch_tokens: int | None = None  # padded tokens per batch (None: batch_size sentences); see batch_tokens_for


def batch_tokens_for(setting: int | str | None, device: torch.device) -> int | None:
    """`batch_tokens` as the extractor takes it: "auto" fills batches to DEFAULT_CUDA_BATCH_TOKENS padded tokens on
    a GPU (fewer, larger launches) and keeps batch_size sentences on a CPU; 0 or None means batch_size."""
    if setting == "auto":
        return DEFAULT_CUDA_BATCH_TOKENS if device.type == "cuda" else None
    return int(setting or 0) or None


DEFAULT_CUDA_BATCH_TOKENS = 16384


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor over a pivot's states as they arrive (from Ray's object store, read-only, or from the lake),
    without a copy on the CPU. Pivot states are only read (cosines, out of place), so torch's warning about a
    read-only NumPy array (shown once per actor, in every run's log) does not apply: the process that receives them
    (an actor) ignores that one warning from then on (a process-wide filter, set once: not `catch_warnings`, which
    the actor's prefetch and writer threads would race)."""
    global _READ_ONLY_QUIET
    if not _READ_ONLY_QUIET:
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        _READ_ONLY_QUIET = True
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


_READ_ONLY_QUIET = False


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
        self.spec = spec
        self._head: LMHead | None = None  # loaded when a task first asks for perplexity
        self.settings = settings
        self.lake = Lake(settings.lake)
        batch_tokens = batch_tokens_for(settings.batch_tokens, self.lm.device)
        self.extractor = StateExtractor(self.lm, settings.batch_size, settings.max_length, batch_tokens=batch_tokens)
        self._pivots: dict[tuple, dict[str, torch.Tensor]] = {}  # (model, checkpoint, pivot, fp) -> device states
        # Parquet writes run beside the next language's forward passes (pyarrow releases the GIL while it
        # compresses); at most WRITES_IN_FLIGHT are pending, and collect() confirms them.
        self._writer = ThreadPoolExecutor(max_workers=WRITES_IN_FLIGHT, thread_name_prefix="lake-writer")
        self._pending: deque[tuple[LanguageTask, Future]] = deque()
        self.write_s = 0.0
        self._write_s_lock = threading.Lock()

    def serves(self, spec: ModelSpec, settings: WorkerSettings) -> bool:
        """Whether this worker's loaded model and extractor fit another plan as they are (an intervention of the
        same checkpoint: the same weights, other neurons switched off per task)."""
        same = ("batch_size", "max_length", "batch_tokens")
        return spec == self.spec and all(getattr(settings, k) == getattr(self.settings, k) for k in same)

    def retarget(self, settings: WorkerSettings) -> None:
        """Write the next tasks with these settings (lake, stored tables); the model stays loaded."""
        if settings.lake != self.settings.lake:
            self.lake = Lake(settings.lake)
        self.settings = settings

    def lm_head(self) -> LMHead:
        if self._head is None:
            self._head = load_lm_head(self.lm, self.spec)
        return self._head

    def _intervention(self, task: LanguageTask):
        """The task's neurons switched off, for every forward pass inside the `with` (none: a plain pass)."""
        if not task.neurons or not any(task.neurons):
            return contextlib.nullcontext()
        return zeroed(self.lm, NeuronSet(torch.tensor(layer, dtype=torch.long) for layer in task.neurons))

    def close(self) -> None:
        """Drop the cached pivot states (device memory); hooks live for one extraction call only."""
        self._pivots.clear()

    @staticmethod
    def _pivot_key(task: LanguageTask) -> tuple:
        return (task.model_name, task.checkpoint, task.pivot, task.checkpoint_fingerprint)

    def has_pivot(self, task: LanguageTask) -> bool:
        """Whether this worker holds the task's pivot states on its device (then none need to be sent)."""
        return self._pivot_key(task) in self._pivots

    def _pivot_for(self, task: LanguageTask, pivot: PivotStates | None) -> tuple[dict[str, torch.Tensor], str]:
        """The pivot's float32 states on this device, and where they came from."""
        key = self._pivot_key(task)
        if key in self._pivots:
            return self._pivots[key], "cache"
        source = "shared"
        if pivot is None and task.pivot_in_lake:
            try:
                pivot, source = self.lake.read_states(task.model_name, task.checkpoint, task.pivot), "lake"
            except Exception as e:  # unreadable: compute it instead (the lake check reports the file)
                log.warning("%s: the pivot's stored states could not be read (%s); computing them", task.lang, e)
        if pivot is not None:
            states = {m: shared_tensor(a).to(self.lm.device) for m, a in pivot.items()}
        elif task.pivot_token_ids is not None:
            log.info("%s @ %s: computing the pivot's states on this actor", task.model_name, task.checkpoint)
            extracted = self.extractor.extract_ids(task.pivot_token_ids)
            states, source = {m: extracted.state(m).float() for m in METHODS}, "computed"
        else:
            raise ValueError(f"language {task.lang!r} needs the pivot {task.pivot!r} states")
        self._pivots = {key: states}  # one checkpoint's pivot at a time
        return states, source

    def process(
        self, task: LanguageTask, pivot: PivotStates | None = None, share_pivot: bool = True
    ) -> tuple[LanguageResult, PivotStates | None]:
        """Extract one language and write its tables. The pivot returns its states too when share_pivot (other
        actors need them); every later language of the checkpoint on this worker uses them from the device."""
        t0, started_at = time.perf_counter(), time.time()
        nll = NLLRecorder(self.lm_head(), len(task.texts)) if task.perplexity else None
        with self._intervention(task):  # a pivot computed here for this language is computed under it too
            if task.token_ids is not None:
                states = self.extractor.extract_ids(task.token_ids, on_batch=nll)
            else:
                states = self.extractor.extract(task.texts, on_batch=nll)
            found, matrices, pivot_source = self._compare(task, states, pivot)
        if nll is not None:
            found |= {"ppl/nll_sum": nll.nll, "ppl/n_predicted": nll.n_predicted}
        small, big = self._copies(task, states, found, matrices, share_pivot)
        host_small = small.arrays()  # O(n x layers + layers x d_ff): wait for it here
        nan_states = {m: int(k) for m, k in zip(METHODS, host_small.pop("nan_rows")) if k}
        for method, bad in nan_states.items():  # such a state never hits; say so rather than let a score drop
            log.warning("%s: %d %s states hold NaN (the model produced NaN activations)", task.lang, bad, method)
        extract_s = time.perf_counter() - t0
        counters = (host_small.pop("n_active"), host_small.pop("abs_sum"), states.n_tokens, states.token_counts)
        confirmed = self.collect(wait_for_room=True)
        future = self._writer.submit(self._write, task, big, counters, _unflatten(host_small))
        self._pending.append((task, future))
        dims = {m: tuple(states.state(m).shape) for m in ("nas", "hidden")}
        result = LanguageResult(
            lang=task.lang,
            n_sentences=len(task.texts),
            n_tokens=states.n_tokens,
            extract_s=extract_s,
            write_s=0.0,  # written in the background: see flush()
            n_layers=dims["nas"][1],
            d_ff=dims["nas"][2],
            d_model=dims["hidden"][2],
            device=str(self.lm.device),
            dtype=str(self.lm.dtype).removeprefix("torch."),
            model_type=self.lm.model_type,
            confirmed=confirmed,
            host_bytes=small.nbytes + big.nbytes,
            nan_states=nan_states,
            pivot_source=pivot_source,
            started_at=started_at,
            extracted_at=started_at + extract_s,
        )
        return result, (big.arrays() if task.is_pivot and share_pivot else None)

    def _compare(self, task: LanguageTask, states, pivot: PivotStates | None) -> tuple[dict, dict, str]:
        """On the device: the language's match results against its pivot (and the cosine matrices when they are
        stored), and where the pivot's states came from; a pivot keeps its own states for the languages after it."""
        found: dict[str, torch.Tensor] = {}
        matrices: dict[str, torch.Tensor] = {}
        if task.is_pivot:
            self._pivots = {self._pivot_key(task): {m: states.state(m).float() for m in METHODS}}
            return found, matrices, ""
        pivot_states, pivot_source = self._pivot_for(task, pivot)
        for method in METHODS:
            p = pivot_states[method]
            if p.shape[0] != len(task.texts):
                raise ValueError(f"pivot has {p.shape[0]} sentences, {task.lang!r} has {len(task.texts)}")
            C = cosine_matrices(p, states.state(method))
            for name, value in match_stats(C).__dict__.items():
                found[f"{method}/{name}"] = value
            if self.settings.store_similarity:
                matrices[method] = C
        return found, matrices, pivot_source

    def _copies(self, task: LanguageTask, states, found: dict, matrices: dict, share_pivot: bool):
        """Only what is kept leaves the device: matches, counters and NaN counts always (small), the states when
        stored or shared (big, overlapping what comes next on CUDA)."""
        nan_rows = torch.stack([states.state(m).isnan().any(-1).sum() for m in METHODS])
        small = HostCopy(
            {**found, **{f"sim/{m}": c for m, c in matrices.items()}, "n_active": states.n_active}
            | {"abs_sum": states.abs_sum, "nan_rows": nan_rows}
        )
        keep = self.settings.store_states or (task.is_pivot and share_pivot)
        big = HostCopy({m: states.state(m).float() for m in METHODS} if keep else {})
        if self.lm.device.type == "cuda":  # the compute stream only: the states' copy overlaps what comes next
            torch.cuda.current_stream().synchronize()
        return small, big

    def collect(self, wait_for_room: bool = False) -> list[WriteOutcome]:
        """Say how the finished writes ended (never raises). wait_for_room: first wait until fewer than
        WRITES_IN_FLIGHT are pending; otherwise wait for every pending write."""
        out = []
        while self._pending and (
            self._pending[0][1].done() or (not wait_for_room) or len(self._pending) >= WRITES_IN_FLIGHT
        ):
            task, pending = self._pending.popleft()
            try:
                ended = pending.result()
                out.append(WriteOutcome(task.model_name, task.checkpoint, task.lang, finished_at=ended))
            except Exception as e:
                error = str(e).splitlines()[0] or repr(e)
                ended = getattr(e, "finished_at", None)
                out.append(WriteOutcome(task.model_name, task.checkpoint, task.lang, error, finished_at=ended))
        return out

    def flush(self) -> float:
        """Wait for the pending writes (raising the first error, if any); return the seconds spent writing so far."""
        for outcome in self.collect():
            if outcome.error:
                raise RuntimeError(outcome.error)
        return self.write_s

    def _write(self, task: LanguageTask, states: HostCopy, counters: tuple, pairs: tuple[dict, dict]) -> float:
        """Write a language's tables; returns when the write ended (epoch seconds), also carried by its error."""
        t0 = time.perf_counter()
        try:
            self._write_tables(task, states.arrays(), counters, pairs)
        except Exception as e:
            error = RuntimeError(f"writing language {task.lang!r} to the lake failed: {e}")
            error.finished_at = time.time()
            raise error from e
        with self._write_s_lock:
            self.write_s += time.perf_counter() - t0
        return time.time()

    def _write_tables(self, task: LanguageTask, host: dict, counters: tuple, pairs: tuple[dict, dict]) -> None:
        """All of a language's tables, then its done marker (see commit_unit)."""
        key = (task.model_name, task.checkpoint)
        n_active, abs_sum, n_tokens, token_counts = counters
        matches, matrices = pairs
        ppl = matches.pop("ppl", None)
        tables = []
        if self.settings.store_states:
            # the pivot's states at full precision: a later run scores against exactly the pivot this one used
            dtype = "float32" if task.is_pivot else self.settings.state_dtype
            states = states_table(*key, task.lang, task.sentence_ids, token_counts, host, dtype)
            tables.append(("sentence_states", states, dtype))
        tables.append(("neuron_counts", neuron_counts_table(*key, task.lang, n_active, abs_sum, n_tokens), None))
        if matches:
            tables.append(("matches", matches_table(*key, task.pivot, task.lang, matches), None))
        if matrices:
            tables.append(("similarity", similarity_table(*key, task.pivot, task.lang, matrices), None))
        if ppl is not None:
            n_neurons = sum(len(layer) for layer in task.neurons or ())
            rows = perplexity_table(
                *key,
                task.pivot,
                task.lang,
                task.sentence_ids,
                ppl["nll_sum"],
                ppl["n_predicted"],
                task.base_model or key[0],
                task.intervention,
                task.switched_off,
                n_neurons,
            )
            tables.append(("perplexity", rows, None))
        info = {
            "n_sentences": len(task.texts),
            "checkpoint_fingerprint": task.checkpoint_fingerprint,
            "run_id": task.run_id,
            # dtype/device "auto" resolve where the actor runs: a language must match its pivot's precision
            "precision": f"{self.lm.device.type}/{str(self.lm.dtype).removeprefix('torch.')}",
        }
        commit_unit(self.lake, *key, task.pivot, task.lang, tables, task.fingerprint, info)


def _unflatten(host: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """ "method/stat" arrays back into per-method match results, and "sim/method" into cosine matrices."""
    matches: dict[str, dict[str, np.ndarray]] = {}
    sims: dict[str, np.ndarray] = {}
    for name, value in host.items():
        head, _, tail = name.partition("/")
        if head == "sim":
            sims[tail] = value
        else:
            matches.setdefault(head, {})[tail] = value
    return matches, sims
