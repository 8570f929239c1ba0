"""GGUF checkpoints, de-quantised once and cached as safetensors: parsing GGUF metadata in transformers costs
far more than the forward passes of a typical job.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.resolve import cache_dir, resolve_source
from neuronxa_ray.model.spec import ModelSpec

log = logging.getLogger(__name__)


def _require_gguf() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"loading a GGUF file needs the packages {missing}: pip install 'neuronxa_ray[gguf]'")


def gguf_cache_path(directory: str, gguf_file: str) -> Path:
    """Where the de-quantised copy of this GGUF file lives (keyed by path, size and modification time)."""
    path = Path(directory) / gguf_file
    if not path.is_file():
        raise NeuronxaError(f"gguf_file {gguf_file!r} not found in {directory!r}")
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"


def needs_conversion(spec: ModelSpec) -> bool:
    """True when loading spec will first de-quantise a GGUF file (once: 34 s for Gemma 3 270M on 2 cores)."""
    source, gguf_file = resolve_source(spec)
    return bool(gguf_file) and not (gguf_cache_path(source, gguf_file) / "config.json").is_file()


@contextmanager
def quiet_progress(gguf: bool = False) -> Iterator[None]:
    """transformers' progress bars (weight loading; with gguf, de-quantising) only on a terminal: in a log file or
    CI output each redraw would be a line of its own."""
    if sys.stderr.isatty():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils = None
    if gguf:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:  # its de-quantising bar is a plain tqdm, outside transformers' switch
        gguf_utils.tqdm = lambda *args, **kwargs: bar(*args, **{**kwargs, "disable": True})
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _converting(target: Path) -> Iterator[None]:
    """One process at a time converts into target (an advisory lock on a file beside it): processes that start on
    an empty cache together (a node's actors, pytest-xdist workers) wait for the first instead of each spending a
    minute or more of CPU on the same conversion. Without fcntl (Windows) each converts; the result is the same."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is de-quantising into %s", target)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def materialize_gguf(directory: str, gguf_file: str) -> Path:
    """De-quantise a GGUF checkpoint once into a cached transformers directory; return that directory."""
    target = gguf_cache_path(directory, gguf_file)
    if (target / "config.json").is_file():
        return target
    with _converting(target):
        if (target / "config.json").is_file():  # converted by the process this one waited for
            return target
        return _convert(directory, gguf_file, target)


@contextmanager
def _one_reader_per_file() -> Iterator[None]:
    """transformers reads a GGUF file's metadata three times in one conversion (config, tokenizer, weights), each a
    `gguf.GGUFReader` that parses every field in Python: for Gemma 3 270M's 262k-token vocabulary about 20 s each, two
    thirds of the whole conversion (profiled). One reader per file serves all three; it only reads the file."""
    import gguf

    original = gguf.GGUFReader
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert(directory: str, gguf_file: str, target: Path) -> Path:
    path = Path(directory) / gguf_file
    _require_gguf()
    from transformers import AutoModel, AutoTokenizer

    log.info("de-quantising %s once into %s", path, target)
    with quiet_progress(gguf=True), _one_reader_per_file():
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        model = AutoModel.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        from safetensors.torch import save_file

        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(_drop_shared(state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        (tmp / "SOURCE").write_text(f"{path}\n")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def _drop_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights); keep the first name of each."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out
