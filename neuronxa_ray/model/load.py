"""Loading a base model (never its LM head) and its tokenizer onto a device, finding its transformer blocks and
the module per block whose output (or input) is the FFN activation; the one way sentences become token ids.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.gguf import materialize_gguf, quiet_progress
from neuronxa_ray.model.resolve import resolve_source
from neuronxa_ray.model.spec import HOOK_SITES, FFNSite, ModelSpec, ffn_site_for

log = logging.getLogger(__name__)


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
        raise NeuronxaError(f"dtype {dtype!r} is not one of {['auto', *allowed]}")
    return allowed[dtype]


def _get_submodule(root: nn.Module, dotted: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as e:
        names = [n for n, _ in root.named_modules() if n]
        hint = difflib.get_close_matches(dotted, names, n=3)
        raise NeuronxaError(
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
    raise NeuronxaError(f"no ModuleList of {n_layers} blocks found; name it with layers_module in the job file")


def hook_modules_for(blocks: list[nn.Module], site: FFNSite, hook_site: str) -> list[nn.Module]:
    if hook_site not in HOOK_SITES:
        raise NeuronxaError(f"hook_site {hook_site!r} is not one of {list(HOOK_SITES)}")
    name = site.act if hook_site == "act" else site.down_proj
    modules = [_get_submodule(block, name, "FFN module") for block in blocks]
    if len({id(m) for m in modules}) != len(modules):
        raise NeuronxaError(f"FFN module {name!r} is shared between blocks; hook a per-block module instead")
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


def tokenize(tokenizer, texts: list[str], max_length: int | None = None, what: str = "") -> list[list[int]]:
    """Token ids per sentence with the tokenizer's default special tokens (as MEXA), each cut to its first
    max_length tokens (a warning says how many were cut, naming `what`). The one way text becomes ids."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    if max_length is None:
        return ids
    cut = sum(1 for x in ids if len(x) > max_length)
    if cut:
        log.warning("%s: %d of %d sentences cut at max_length %d tokens", what or "tokenize", cut, len(ids), max_length)
    return [x[:max_length] for x in ids]


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
