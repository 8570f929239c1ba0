"""Job files: YAML -> validated JobConfig. CLI flags override YAML, YAML overrides defaults.

Minimal job:
    model: path/or/hub-id          # or package:<module> for a model a Python package ships
    data: {path: dir/, ext: .txt}  # or path: bundled:udhr; or a .tsv/.jsonl file of (id, lang, text)
    pivot: eng
Relative paths are taken from the current directory. Every field is typed: a YAML value of another type (the
string "false" for a boolean, `true` for a number) is an error naming the file, the field, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from neuronxa_ray.config.job import (
    DTYPES,
    INTERVENTION_KINDS,
    STATE_DTYPES,
    Checkpoint,
    CheckpointGlob,
    DataSpec,
    Intervention,
    JobConfig,
    _unique_names,
    step_from_name,
)
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.spec import HOOK_SITES

_FIELDS = {f.name for f in dataclasses.fields(JobConfig)} - {"source"}

_DATA_FIELDS = {"path", "ext", "format"}

_CHECKPOINT_FIELDS = {"name", "revision", "path", "step"}


def _err(source: str, key: str, value: Any, allowed: str) -> NeuronxaError:
    return NeuronxaError(f"{source}: field {key!r} = {value!r}: {allowed}")


def _unknown(source: str, where: str, keys: set[str], allowed: set[str]) -> None:
    for key in sorted(keys - allowed, key=str):
        hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise NeuronxaError(f"{source}: unknown field {where}{key!r}{extra} (allowed: {sorted(allowed)})")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {str: "a string", int: "a whole number", bool: "true or false", float: "a number"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value has the declared type. Booleans are never numbers; whole numbers are floats too."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # structured fields (data, checkpoints) are checked by their own parsers


_HINTS = typing.get_type_hints(JobConfig)


def _checkpoint(source: str, model: str, entry: Any, index: int) -> Checkpoint:
    key = f"checkpoints[{index}]"
    if isinstance(entry, (str, int)) and not isinstance(entry, bool):
        entry = str(entry)
        if Path(entry).is_dir():
            return Checkpoint(name=Path(entry).name, model=str(Path(entry).resolve()), step=step_from_name(entry))
        return Checkpoint(name=entry, model=model, revision=entry)
    if not isinstance(entry, dict):
        raise _err(source, key, entry, "must be a revision, a directory, or {name, revision, path, step}")
    _unknown(source, f"{key}.", set(entry), _CHECKPOINT_FIELDS)
    for sub in ("name", "revision", "path"):
        if entry.get(sub) is not None and not isinstance(entry[sub], str):
            raise _err(source, f"{key}.{sub}", entry[sub], "must be a string")
    path, revision = entry.get("path"), entry.get("revision")
    name = entry.get("name") or revision or (Path(path).name if path else None)
    if not name:
        raise _err(source, key, entry, "needs a name, a revision or a path")
    step = entry.get("step")
    if step is not None and not _matches(step, int):
        raise _err(source, f"{key}.step", step, "must be an integer training step")
    model_path = str(Path(path).resolve()) if path and Path(path).exists() else path
    return Checkpoint(name=str(name), model=str(model_path or model), revision=revision, step=step)


def _checkpoints(source: str, model: str, raw: Any) -> list[Checkpoint] | CheckpointGlob:
    if raw is None:
        return []
    if isinstance(raw, dict):
        _unknown(source, "checkpoints.", set(raw), {"glob"})
        if not isinstance(raw.get("glob"), str) or not raw["glob"]:
            raise _err(
                source, "checkpoints.glob", raw.get("glob"), "must be a path pattern such as 'ckpts/checkpoint-*'"
            )
        return CheckpointGlob(raw["glob"])
    if not isinstance(raw, list):
        raise _err(source, "checkpoints", raw, "must be a list, or {glob: PATTERN}")
    return [_checkpoint(source, model, c, i) for i, c in enumerate(raw)]


_INTERVENTION_FIELDS = {
    "lape": {"off", "of"},
    "random": {"off", "like", "seed"},
    "file": {"off", "path"},
    "none": {"off"},
}


def _intervention(source: str, entry: Any, index: int) -> Intervention | None:
    """One entry of `interventions:` (None for `none`, the baseline, which always runs)."""
    key = f"interventions[{index}]"
    if entry == "none":
        return None
    if isinstance(entry, dict) and False in entry and "off" not in entry:
        entry = {("off" if k is False else k): v for k, v in entry.items()}  # YAML 1.1 reads the key `off` as false
    if not isinstance(entry, dict) or entry.get("off") not in INTERVENTION_KINDS:
        raise _err(
            source,
            key,
            entry,
            "must be none, {off: lape, of: LANG|all}, {off: random, like: LANG|all, seed: N} or "
            "{off: file, path: FILE}",
        )
    kind = entry["off"]
    _unknown(source, f"{key}.", set(entry), _INTERVENTION_FIELDS[kind])
    if kind == "none":
        return None
    need = {"lape": "of", "random": "like", "file": "path"}[kind]
    if not isinstance(entry.get(need), str) or not entry[need]:
        raise _err(
            source,
            f"{key}.{need}",
            entry.get(need),
            "must be a language code or 'all'"
            if need != "path"
            else "must be the path of a Parquet or CSV file with columns layer, neuron",
        )
    seed = entry.get("seed", 0)
    if not _matches(seed, int) or seed < 0:
        raise _err(source, f"{key}.seed", seed, "must be a whole number >= 0")
    path = entry.get("path")
    if path is not None:
        if not Path(path).is_file():
            raise _err(source, f"{key}.path", path, "must be an existing Parquet or CSV file (columns layer, neuron)")
        path = str(Path(path).resolve())
    return Intervention(off=kind, of=entry.get("of"), like=entry.get("like"), seed=seed, path=path)


def _interventions(source: str, raw: Any) -> list[Intervention]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err(source, "interventions", raw, "must be a list, such as [{off: lape, of: fra}]")
    out: list[Intervention] = []
    for i, entry in enumerate(raw):
        item = _intervention(source, entry, i)
        if item is None:
            continue
        clash = next((o for o in out if o.label == item.label), None)
        if clash is not None:
            raise _err(
                source,
                f"interventions[{i}]",
                entry,
                f"is stored as {item.label!r} like an earlier entry: "
                "give each its own set (another language, seed or file name)",
            )
        out.append(item)
    return out


def job_from_dict(raw: dict[str, Any], source: str = "<job>", overrides: dict[str, Any] | None = None) -> JobConfig:
    """Validate a job mapping (plus CLI overrides, which win) into a JobConfig."""
    if raw is None:
        raise NeuronxaError(f"{source}: the job file is empty (it needs a YAML mapping with at least model and data)")
    if not isinstance(raw, dict):
        raise NeuronxaError(f"{source}: a job file must be a YAML mapping, got {type(raw).__name__}")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    _unknown(source, "", set(raw), _FIELDS)
    for required in ("model", "data"):
        if required not in raw:
            raise NeuronxaError(f"{source}: missing required field {required!r}")
    for key, value in raw.items():
        if key in ("data", "checkpoints", "interventions"):
            continue
        if key == "lake" and isinstance(value, Path):
            raw[key] = value = str(value)
        if not _matches(value, _HINTS[key]):
            raise _err(source, key, value, f"must be {_type_name(_HINTS[key])}")
    model = raw["model"]
    if not model:
        raise _err(source, "model", model, "must be a hub id, a directory, a .gguf path or package:<module>")
    data = raw["data"]
    if isinstance(data, str):
        data = {"path": data}
    if not isinstance(data, dict) or "path" not in data:
        raise _err(source, "data", data, "must be a mapping with at least 'path'")
    _unknown(source, "data.", set(data), _DATA_FIELDS)
    for sub in ("path", "ext"):
        if sub in data and (not isinstance(data[sub], str) or not data[sub]):
            raise _err(source, f"data.{sub}", data[sub], "must be a non-empty string")
    if isinstance(data.get("ext"), str) and not data["ext"].startswith("."):
        raise _err(source, "data.ext", data["ext"], f"must start with a dot, such as {'.' + data['ext']!r}")
    if data.get("format") not in (None, "tsv", "jsonl"):
        raise _err(source, "data.format", data["format"], "must be 'tsv' or 'jsonl' (or absent for a directory)")
    kwargs = {k: v for k, v in raw.items() if k not in ("data", "checkpoints", "interventions")}
    if isinstance(kwargs.get("placement_timeout_s"), int):
        kwargs["placement_timeout_s"] = float(kwargs["placement_timeout_s"])
    kwargs["data"] = DataSpec(path=data["path"], ext=data.get("ext", ".txt"), format=data.get("format"))
    kwargs["checkpoints"] = _checkpoints(source, model, raw.get("checkpoints"))
    kwargs["interventions"] = _interventions(source, raw.get("interventions"))
    job = JobConfig(**kwargs, source=source)
    _validate(job)
    return job


def _validate(job: JobConfig) -> None:
    s = job.source
    if not job.pivot:
        raise _err(s, "pivot", job.pivot, "must be a language code such as 'eng'")
    if job.languages is not None:
        if not job.languages:
            raise _err(s, "languages", job.languages, "must name at least one language (leave it out for all)")
        if not all(job.languages):
            raise _err(s, "languages", job.languages, "language codes must be non-empty")
        if set(job.languages) <= {job.pivot}:
            raise _err(s, "languages", job.languages, f"names only the pivot {job.pivot!r}: add a language to compare")
    for key in ("n_sentences", "batch_size", "max_attempts", "gpus_per_actor"):
        if getattr(job, key) < 1:
            raise _err(s, key, getattr(job, key), "must be a whole number >= 1")
    if job.n_sentences < 2:
        raise _err(s, "n_sentences", job.n_sentences, "must be >= 2 (scores compare sentences with each other)")
    if job.max_length is not None and job.max_length < 1:
        raise _err(s, "max_length", job.max_length, "must be a whole number >= 1 or null")
    if job.num_actors is not None and job.num_actors < 1:
        raise _err(s, "num_actors", job.num_actors, "must be a whole number >= 1 or null (auto)")
    if job.placement_timeout_s <= 0:
        raise _err(s, "placement_timeout_s", job.placement_timeout_s, "must be a number of seconds > 0")
    if job.hook_site not in HOOK_SITES:
        raise _err(s, "hook_site", job.hook_site, f"must be one of {list(HOOK_SITES)}")
    if job.dtype not in DTYPES:
        raise _err(s, "dtype", job.dtype, f"must be one of {list(DTYPES)}")
    if job.state_dtype not in STATE_DTYPES:
        raise _err(s, "state_dtype", job.state_dtype, f"must be one of {list(STATE_DTYPES)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", job.device):
        raise _err(s, "device", job.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if isinstance(job.store_states, str) and job.store_states != "auto":
        raise _err(s, "store_states", job.store_states, "must be true, false or 'auto'")
    if isinstance(job.batch_tokens, str) and job.batch_tokens != "auto":
        raise _err(s, "batch_tokens", job.batch_tokens, "must be 'auto', 0 (batch_size sentences) or a whole number")
    if isinstance(job.batch_tokens, int) and job.batch_tokens < 0:
        raise _err(s, "batch_tokens", job.batch_tokens, "must be 'auto', 0 (batch_size sentences) or a whole number")
    if isinstance(job.pivots, str) and job.pivots != "all":
        raise _err(s, "pivots", job.pivots, "must be 'all' or a list of language codes")
    if job.pivots is not None and job.store_states is False:
        raise _err(s, "pivots", job.pivots, "every pair is computed from stored states: needs store_states: true")
    if not job.lake:
        raise _err(s, "lake", job.lake, "must be a directory or a URI such as s3://bucket/prefix")
    for item in job.interventions:
        for lang in (item.of, item.like):
            if lang not in (None, "all") and job.languages is not None and lang not in {job.pivot, *job.languages}:
                raise _err(s, "interventions", item.label, f"{lang!r} is not a language of this job")
        if item.off != "file" and job.languages is not None and len(set(job.languages) | {job.pivot}) < 2:
            raise _err(s, "interventions", item.label, "language-specific neurons need two languages or more")
    if not isinstance(job.checkpoints, CheckpointGlob):
        _unique_names(job.resolved_checkpoints(), f"{s}: field 'checkpoints'")


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    file = Path(path)
    if not file.is_file():
        raise NeuronxaError(f"job file {str(file)!r} does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        raise NeuronxaError(f"{file}: not valid YAML: {' '.join(x.strip() for x in first)}") from e
    return job_from_dict(raw, source=str(file), overrides=overrides)
