"""The job: what to measure (model, checkpoints, data, languages) and how (precision, hook site, batching,
storage). Fields whose metadata says `fingerprint` change the numbers a run produces: the planner derives a
checkpoint's fingerprint from exactly those (plus the weights and the data), so the list is never hand-kept.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronxa_ray.corpus.readers import BUNDLED_UDHR, ParallelCorpus, read_corpus
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.spec import ModelSpec

STATE_DTYPES = ("float32", "float16")

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")

FINGERPRINT = {"fingerprint": True}  # field metadata: this setting changes the numbers


@dataclass(frozen=True)
class Checkpoint:
    """One model version to run: its lake name and what to load."""

    name: str
    model: str
    revision: str | None = None
    step: int | None = None


@dataclass(frozen=True)
class CheckpointGlob:
    """Checkpoints given as a pattern (`checkpoints: {glob: "ckpts/checkpoint-*"}`): every matching directory, its
    step parsed from the last number in its name. Resolved anew each time (the watch command polls it)."""

    pattern: str

    def resolve(self) -> list[Checkpoint]:
        found = [Path(p) for p in sorted(glob.glob(self.pattern)) if Path(p).is_dir()]
        out = [Checkpoint(name=p.name, model=str(p.resolve()), step=step_from_name(p.name)) for p in found]
        _unique_names(out, f"checkpoints glob {self.pattern!r}")
        return sorted(out, key=lambda c: (c.step is None, c.step or 0, c.name))


def _unique_names(checkpoints: list[Checkpoint], where: str) -> None:
    """Checkpoints are stored under their names: two that share one would overwrite each other's results."""
    seen: dict[str, Checkpoint] = {}
    for c in checkpoints:
        other = seen.setdefault(c.name, c)
        if other is not c:
            raise NeuronxaError(
                f"{where}: checkpoint names must be unique: {other.model!r} and {c.model!r} would both be stored as "
                f"checkpoint {c.name!r}; give them distinct names (a list of {{name, path}}) or a narrower pattern"
            )


def step_from_name(name: str) -> int | None:
    """The training step in a checkpoint name: the last run of digits (`checkpoint-1500` -> 1500)."""
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else None


INTERVENTION_KINDS = ("none", "lape", "random", "file")


@dataclass(frozen=True)
class Intervention:
    """Neurons switched off while every language of every checkpoint is evaluated again (docs/INTERVENTIONS.md):
    `lape` the language-specific neurons of `of` (a language of the job, or "all": every language's), read from
    the lake's language_specific_neurons for the same model and checkpoint; `random` as many neurons per layer as
    the LAPE set of `like`, drawn with `seed`; `file` the (layer, neuron) rows of a Parquet or CSV file."""

    off: str
    of: str | None = None
    like: str | None = None
    seed: int = 0
    path: str | None = None

    @property
    def label(self) -> str:
        """Its name in the lake: `lape:fra`, `random:fra:seed0`, `file:neurons.parquet`."""
        if self.off == "lape":
            return f"lape:{self.of}"
        if self.off == "random":
            return f"random:{self.like}:seed{self.seed}"
        return f"file:{Path(self.path or '').name}"

    @property
    def switched_off(self) -> str | None:
        """The language whose neurons are off (or whose set's size a random control copies); None for a file."""
        return self.of if self.off == "lape" else self.like

    def model_name(self, base: str) -> str:
        """The model name its results are stored under: every view then holds them as a model of their own."""
        return f"{base} [off {self.label}]"


@dataclass(frozen=True)
class DataSpec:
    path: str
    ext: str = ".txt"
    format: str | None = None  # None: directory of <lang><ext> files, or tsv/jsonl by suffix

    def resolved_path(self) -> Path:
        if self.path.startswith("bundled:"):
            name = self.path.removeprefix("bundled:")
            if name != "udhr":
                raise NeuronxaError(f"data.path {self.path!r}: the bundled samples are ['bundled:udhr']")
            return BUNDLED_UDHR
        return Path(self.path)


@dataclass
class JobConfig:
    model: str
    data: DataSpec
    pivot: str = "eng"
    languages: list[str] | None = None
    n_sentences: int = field(default=100, metadata=FINGERPRINT)
    lake: str = "lake"
    name: str | None = None  # the model's name in the lake (default: model)
    revision: str | None = None
    checkpoints: list[Checkpoint] | CheckpointGlob = field(default_factory=list)
    gguf_file: str | None = field(default=None, metadata=FINGERPRINT)
    dtype: str = field(default="auto", metadata=FINGERPRINT)
    device: str = field(default="auto", metadata=FINGERPRINT)
    hook_site: str = field(default="act", metadata=FINGERPRINT)
    ffn_module: str | None = field(default=None, metadata=FINGERPRINT)
    layers_module: str | None = field(default=None, metadata=FINGERPRINT)
    trust_remote_code: bool = False
    batch_size: int = 16  # padding is masked: the batch changes float rounding only, not a result
    batch_tokens: int | str = "auto"  # padded tokens per batch (auto: 16384 on a GPU, batch_size sentences on CPU)
    max_length: int | None = field(default=512, metadata=FINGERPRINT)
    num_actors: int | None = None  # default: one per GPU, else 1
    gpus_per_actor: int = 1  # a model that needs k GPUs is spread over them with device_map
    state_dtype: str = field(default="float16", metadata=FINGERPRINT)  # the pivot's are stored as float32
    store_states: bool | str = "auto"  # auto: stored while a checkpoint's states stay small (planning.tables)
    max_attempts: int = 3  # a unit whose actor or node dies is retried elsewhere up to this many times
    placement_timeout_s: float = 60.0  # actors not placed by then: an error naming what was asked and what exists
    store_similarity: bool = False  # also the O(n^2) cosine matrices; scores read `matches` (O(n)) either way
    pivots: list[str] | str | None = None  # 'all' or languages: every (pivot, lang) pair, see scoring.compute_pairs
    interventions: list[Intervention] = field(default_factory=list)  # each a second evaluation; `none` always runs
    source: str = "<job>"  # where the job came from, for error messages

    @property
    def model_name(self) -> str:
        return self.name or self.model

    def model_spec(self, checkpoint: Checkpoint) -> ModelSpec:
        return ModelSpec(
            model=checkpoint.model,
            revision=checkpoint.revision,
            gguf_file=self.gguf_file,
            dtype=self.dtype,
            device=self.device,
            hook_site=self.hook_site,
            ffn_module=self.ffn_module,
            layers_module=self.layers_module,
            trust_remote_code=self.trust_remote_code,
        )

    def resolved_checkpoints(self) -> list[Checkpoint]:
        if isinstance(self.checkpoints, CheckpointGlob):
            return self.checkpoints.resolve()
        if self.checkpoints:
            return list(self.checkpoints)
        return [Checkpoint(name=self.revision or "main", model=self.model, revision=self.revision)]

    def load_corpus(self) -> ParallelCorpus:
        corpus = read_corpus(self.data.resolved_path(), ext=self.data.ext, fmt=self.data.format)
        return corpus.select(self.pivot, self.languages, self.n_sentences)

    def fingerprint_settings(self) -> dict[str, Any]:
        """The settings that change numbers (fields marked FINGERPRINT), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("fingerprint")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
