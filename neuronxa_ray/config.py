"""Job files: YAML -> validated JobConfig. CLI flags override YAML, YAML overrides defaults.

Minimal job (see DESIGN.md):
    model: path/or/hub-id          # or package:<module> for a model a Python package ships
    data: {path: dir/, ext: .txt}  # or path: bundled:udhr; or a .tsv/.jsonl file of (id, lang, text)
    pivot: eng
Relative paths are taken from the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from neuronxa_ray.models import HOOK_SITES, ModelSpec
from neuronxa_ray.readers import BUNDLED_UDHR, ParallelCorpus, read_corpus

STATE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Checkpoint:
    """One model version to run: its lake name and what to load."""

    name: str
    model: str
    revision: str | None = None
    step: int | None = None


@dataclass(frozen=True)
class DataSpec:
    path: str
    ext: str = ".txt"
    format: str | None = None  # None: directory of <lang><ext> files, or tsv/jsonl by suffix

    def resolved_path(self) -> Path:
        if self.path.startswith("bundled:"):
            name = self.path.removeprefix("bundled:")
            if name != "udhr":
                raise ValueError(f"data.path {self.path!r}: the bundled samples are ['bundled:udhr']")
            return BUNDLED_UDHR
        return Path(self.path)


@dataclass
class JobConfig:
    model: str
    data: DataSpec
    pivot: str = "eng"
    languages: list[str] | None = None
    n_sentences: int = 100
    lake: str = "lake"
    name: str | None = None  # the model's name in the lake (default: model)
    revision: str | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    gguf_file: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    hook_site: str = "act"
    ffn_module: str | None = None
    layers_module: str | None = None
    trust_remote_code: bool = False
    batch_size: int = 16
    max_length: int | None = 512
    num_actors: int | None = None  # default: one per GPU, else 1
    state_dtype: str = "float32"
    store_states: bool = True
    store_similarity: bool = False  # also the O(n^2) cosine matrices; scores read `matches` (O(n)) either way
    pivots: list[str] | str | None = None  # 'all' or languages: every (pivot, lang) pair, see scoring.compute_pairs
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
        if self.checkpoints:
            return list(self.checkpoints)
        return [Checkpoint(name=self.revision or "main", model=self.model, revision=self.revision)]

    def load_corpus(self) -> ParallelCorpus:
        corpus = read_corpus(self.data.resolved_path(), ext=self.data.ext, fmt=self.data.format)
        return corpus.select(self.pivot, self.languages, self.n_sentences)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(JobConfig)} - {"source"}
_DATA_FIELDS = {"path", "ext", "format"}
_CHECKPOINT_FIELDS = {"name", "revision", "path", "step"}


def _err(source: str, key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{source}: field {key!r} = {value!r}: {allowed}")


def _unknown(source: str, where: str, keys: set[str], allowed: set[str]) -> None:
    for key in sorted(keys - allowed):
        hint = difflib.get_close_matches(key, sorted(allowed), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"{source}: unknown field {where}{key!r}{extra} (allowed: {sorted(allowed)})")


def _checkpoint(source: str, model: str, entry: Any, index: int) -> Checkpoint:
    key = f"checkpoints[{index}]"
    if isinstance(entry, (str, int)):
        entry = str(entry)
        if Path(entry).is_dir():
            return Checkpoint(name=Path(entry).name, model=entry)
        return Checkpoint(name=entry, model=model, revision=entry)
    if not isinstance(entry, dict):
        raise _err(source, key, entry, "must be a revision, a directory, or {name, revision, path, step}")
    _unknown(source, f"{key}.", set(entry), _CHECKPOINT_FIELDS)
    path, revision = entry.get("path"), entry.get("revision")
    name = entry.get("name") or revision or (Path(path).name if path else None)
    if not name:
        raise _err(source, key, entry, "needs a name, a revision or a path")
    step = entry.get("step")
    if step is not None and not isinstance(step, int):
        raise _err(source, f"{key}.step", step, "must be an integer training step")
    return Checkpoint(name=str(name), model=str(path or model), revision=revision, step=step)


def job_from_dict(raw: dict[str, Any], source: str = "<job>", overrides: dict[str, Any] | None = None) -> JobConfig:
    """Validate a job mapping (plus CLI overrides, which win) into a JobConfig."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a job file must be a YAML mapping, got {type(raw).__name__}")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    _unknown(source, "", set(raw), _FIELDS)
    for required in ("model", "data"):
        if required not in raw:
            raise ValueError(f"{source}: missing required field {required!r}")
    model = raw["model"]
    if not isinstance(model, str) or not model:
        raise _err(source, "model", model, "must be a hub id, a directory, a .gguf path or package:<module>")
    data = raw["data"]
    if isinstance(data, str):
        data = {"path": data}
    if not isinstance(data, dict) or "path" not in data:
        raise _err(source, "data", data, "must be a mapping with at least 'path'")
    _unknown(source, "data.", set(data), _DATA_FIELDS)
    if data.get("format") not in (None, "tsv", "jsonl"):
        raise _err(source, "data.format", data["format"], "must be 'tsv' or 'jsonl' (or absent for a directory)")
    kwargs = {k: v for k, v in raw.items() if k not in ("data", "checkpoints")}
    kwargs["data"] = DataSpec(path=str(data["path"]), ext=str(data.get("ext", ".txt")), format=data.get("format"))
    checkpoints = raw.get("checkpoints") or []
    if not isinstance(checkpoints, list):
        raise _err(source, "checkpoints", checkpoints, "must be a list")
    kwargs["checkpoints"] = [_checkpoint(source, model, c, i) for i, c in enumerate(checkpoints)]
    job = JobConfig(**kwargs, source=source)
    _validate(job)
    return job


def _validate(job: JobConfig) -> None:
    s = job.source
    if not isinstance(job.pivot, str) or not job.pivot:
        raise _err(s, "pivot", job.pivot, "must be a language code such as 'eng'")
    if job.languages is not None and (
        not isinstance(job.languages, list) or not all(isinstance(x, str) for x in job.languages)
    ):
        raise _err(s, "languages", job.languages, "must be a list of language codes")
    for key in ("n_sentences", "batch_size"):
        value = getattr(job, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _err(s, key, value, "must be a whole number >= 1")
    if job.n_sentences < 2:
        raise _err(s, "n_sentences", job.n_sentences, "must be >= 2 (scores compare sentences with each other)")
    if job.max_length is not None and (not isinstance(job.max_length, int) or job.max_length < 1):
        raise _err(s, "max_length", job.max_length, "must be a whole number >= 1 or null")
    if job.num_actors is not None and (not isinstance(job.num_actors, int) or job.num_actors < 1):
        raise _err(s, "num_actors", job.num_actors, "must be a whole number >= 1 or null (auto)")
    if job.hook_site not in HOOK_SITES:
        raise _err(s, "hook_site", job.hook_site, f"must be one of {list(HOOK_SITES)}")
    if job.dtype not in ("auto", "float32", "bfloat16", "float16", "float64"):
        raise _err(s, "dtype", job.dtype, "must be one of ['auto', 'float32', 'bfloat16', 'float16', 'float64']")
    if job.state_dtype not in STATE_DTYPES:
        raise _err(s, "state_dtype", job.state_dtype, f"must be one of {list(STATE_DTYPES)}")
    names = [c.name for c in job.resolved_checkpoints()]
    if len(set(names)) != len(names):
        raise _err(s, "checkpoints", names, "checkpoint names must be unique")


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"job file {str(file)!r} does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{file}: not valid YAML: {e}") from e
    return job_from_dict(raw, source=str(file), overrides=overrides)
