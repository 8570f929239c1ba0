"""What a job asks to load (ModelSpec) and where each architecture keeps its FFN activation (the adapter
table). No torch: validating a job file imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuronxa_ray.errors import NeuronxaError

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
