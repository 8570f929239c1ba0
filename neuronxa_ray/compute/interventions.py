"""Neuron interventions: switch FFN neurons off in the same forward pass that computes the states, and measure the
language model's perplexity from the hidden states that pass already has.

  NeuronSet       per transformer block, the sorted indices of the neurons to switch off; its fingerprint
  zeroed          hooks that set those neurons' activation to 0 (LAPE's `index_fill_`), ahead of any other hook
  LMHead          the output projection (and logit soft-capping) of a causal LM, applied to the final hidden state
  sentence_nll    per sentence, the sum of next-token negative log-likelihoods and the number of predicted tokens
  NLLRecorder     the extractor's per-batch callback that accumulates sentence_nll in input order

Perplexity aggregates exactly over any subset of sentences: exp(sum of NLL sums / sum of predicted tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.load import LoadedModel

log = logging.getLogger(__name__)

MAX_LOGITS = 1 << 24  # logits held at once per chunk (64 MiB in float32): 64 positions of a 262k vocabulary


class NeuronSet:
    """Per block (transformer layer index), a sorted int64 CPU tensor of distinct neuron indices."""

    def __init__(self, layers: Iterable[torch.Tensor]) -> None:
        self.layers: tuple[torch.Tensor, ...] = tuple(
            torch.unique(torch.as_tensor(idx, dtype=torch.long).reshape(-1).cpu()) for idx in layers
        )  # torch.unique sorts

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def empty(cls, n_layers: int) -> NeuronSet:
        return cls(torch.zeros(0, dtype=torch.long) for _ in range(n_layers))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], n_layers: int, d_ff: int) -> NeuronSet:
        """(layer, neuron) pairs -> a set; every pair must name a neuron of a model of n_layers blocks x d_ff."""
        per_layer: list[list[int]] = [[] for _ in range(n_layers)]
        bad: list[tuple] = []
        for pair in pairs:
            layer, neuron = (int(v) for v in pair)
            if 0 <= layer < n_layers and 0 <= neuron < d_ff:
                per_layer[layer].append(neuron)
            else:
                bad.append((layer, neuron))
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise NeuronxaError(
                f"neuron (layer {bad[0][0]}, neuron {bad[0][1]}){more} is out of range: this model has {n_layers} "
                f"layers (0..{n_layers - 1}) of {d_ff} FFN neurons (0..{d_ff - 1})"
            )
        return cls(torch.tensor(x, dtype=torch.long) for x in per_layer)

    @classmethod
    def random_like(cls, other: NeuronSet, d_ff: int, seed: int) -> NeuronSet:
        """The same number of neurons in each layer, drawn uniformly without replacement from all d_ff neurons
        (a control set: it may overlap `other`). One draw per layer from torch.Generator(seed): deterministic."""
        generator = torch.Generator().manual_seed(int(seed))
        layers = []
        for count in other.per_layer_counts():
            if count > d_ff:
                raise NeuronxaError(f"cannot draw {count} distinct neurons from a layer of {d_ff}")
            layers.append(torch.randperm(d_ff, generator=generator)[:count])
        return cls(layers)

    def size(self) -> int:
        return sum(len(idx) for idx in self.layers)

    def per_layer_counts(self) -> list[int]:
        return [len(idx) for idx in self.layers]

    def to_pairs(self) -> list[tuple[int, int]]:
        return [(layer, int(n)) for layer, idx in enumerate(self.layers) for n in idx.tolist()]

    def fingerprint(self) -> str:
        """A short digest of the set (layer count and every index): a changed set gets a new fingerprint."""
        text = ";".join(",".join(map(str, idx.tolist())) for idx in self.layers)
        return hashlib.sha256(f"{self.n_layers}|{text}".encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.n_layers == other.n_layers and all(torch.equal(a, b) for a, b in zip(self.layers, other.layers))

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"NeuronSet({self.size()} neurons in {self.n_layers} layers, {self.fingerprint()})"


def _zeroing_hooks(idx: torch.Tensor, layer: int):
    """A forward hook (site "act") and a forward pre-hook (site "down_proj_input") zeroing idx on the last axis."""
    on_device: dict[torch.device, torch.Tensor] = {}
    top = int(idx.max())
    if int(idx.min()) < 0:
        raise NeuronxaError(f"neuron {int(idx.min())} of layer {layer} asked to be zeroed: indices start at 0")

    def zero(act: torch.Tensor) -> torch.Tensor:
        if top >= act.shape[-1]:
            raise NeuronxaError(f"neuron {top} of layer {layer} asked to be zeroed, but the layer has {act.shape[-1]}")
        where = on_device.get(act.device)
        if where is None:
            where = on_device[act.device] = idx.to(act.device)
        if act.requires_grad:  # autograd may need the original: zero a copy
            return act.index_fill(-1, where, 0)
        return act.index_fill_(-1, where, 0)  # as LAPE's ppl.py: in place, no extra activation-sized buffer

    def output_hook(module, args, output):
        return zero(output)

    def input_hook(module, args):
        return (zero(args[0]), *args[1:])

    return output_hook, input_hook


@contextlib.contextmanager
def zeroed(lm: LoadedModel, neurons: NeuronSet) -> Iterator[None]:
    """Inside the `with`, the neurons' FFN activation is 0 at the model's hook site. The hooks are prepended, so they
    run before any hook on the same modules (the extractor's) whichever context was entered first: the states then
    see the zeroed activation. Removed in `finally`."""
    if neurons.n_layers != len(lm.hook_modules):
        raise NeuronxaError(f"the neuron set has {neurons.n_layers} layers, the model {len(lm.hook_modules)}")
    handles = []
    try:
        for layer, (module, idx) in enumerate(zip(lm.hook_modules, neurons.layers)):
            if len(idx) == 0:
                continue  # nothing to zero: no hook at all, the layer runs exactly as without
            output_hook, input_hook = _zeroing_hooks(idx, layer)
            if lm.hook_site == "act":
                handles.append(module.register_forward_hook(output_hook, prepend=True))
            else:
                handles.append(module.register_forward_pre_hook(input_hook, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LMHead:
    """A causal LM's output layer: logits = transform(hidden @ weight.T + bias) for the final (normed) hidden state,
    with the architecture's logit scaling and soft-capping (Gemma 2/3 `final_logit_softcapping`) applied."""

    weight: torch.Tensor  # [vocab, d_model]
    bias: torch.Tensor | None = None  # [vocab]
    softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    scale: float = 1.0  # logits -> logits * scale (Cohere's logit_scale, 1 / Granite's logits_scaling)

    @classmethod
    def from_module(cls, module: nn.Module, config) -> LMHead:
        """The head from a causal LM's output embeddings (an nn.Linear) and its config."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        softcap = getattr(text, "final_logit_softcapping", None)
        scale = float(getattr(text, "logit_scale", None) or 1.0) / float(getattr(text, "logits_scaling", None) or 1.0)
        return cls(module.weight, getattr(module, "bias", None), float(softcap) if softcap else None, scale)

    @classmethod
    def from_causal_lm(cls, model: nn.Module) -> LMHead:
        return cls.from_module(model.get_output_embeddings(), model.config)

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, d_model] -> [n, vocab] logits in float32 (float64 for a float64 head): the matmul in the head's dtype
        (as the model computes it), the scaling and soft-capping after the upcast."""
        logits = nn.functional.linear(hidden.to(self.weight.device, self.weight.dtype), self.weight, self.bias)
        logits = logits.to(torch.float64 if self.weight.dtype == torch.float64 else torch.float32)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def load_lm_head(lm: LoadedModel, spec) -> LMHead:
    """The LM head of a loaded base model, with no second forward pass. Where the checkpoint ties its output layer
    to the input embeddings (Gemma, most small models): the base model's embedding matrix itself, nothing loaded.
    Otherwise the output layer's own tensors, read from the checkpoint's safetensors (an 8B Llama's 1 GB head,
    not its 16 GB); where they cannot be found there, the checkpoint's causal LM is built once on the host and all
    but its head dropped. `spec` is the ModelSpec the base model was loaded from."""
    config = lm.model.config
    if getattr(config, "tie_word_embeddings", False) and lm.model.get_input_embeddings() is not None:
        return LMHead.from_module(lm.model.get_input_embeddings(), config)
    from neuronxa_ray.model.load import _pretrained_source

    source, kwargs = _pretrained_source(spec)
    head = _head_from_safetensors(source, kwargs, config, lm.dtype)
    if head is None:
        head = _head_from_causal_lm(source, kwargs, lm.dtype)
    return LMHead.from_module(head.to(lm.device).requires_grad_(False), config)


def _head_from_causal_lm(source: str, kwargs: dict, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from neuronxa_ray.model.gguf import quiet_progress

    log.info("LM head: loading the whole causal LM from %s to keep its output layer", source)
    with quiet_progress():
        causal, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, output_loading_info=True, **kwargs)
    head = causal.get_output_embeddings()
    names = {name for name, module in causal.named_modules() if module is head}
    untrained = [k for k in info.get("missing_keys", ()) if k.rsplit(".", 1)[0] in names]
    if head is None or untrained:
        # transformers would start such a head from random weights: every perplexity would be noise
        raise NeuronxaError(
            f"{source} holds no language-model head (a base model without {', '.join(untrained) or 'an output layer'}"
            "): perplexity under interventions needs a causal-LM checkpoint"
        )
    return head


def _head_from_safetensors(source: str, kwargs: dict, config, dtype: torch.dtype) -> nn.Module | None:
    """The causal LM's output layer with only its own tensors read from the checkpoint; None where it has none."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # the module tree and names only: no memory, no initialisation
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=kwargs.get("trust_remote_code", False))
    head = skeleton.get_output_embeddings()
    prefix = next((name for name, module in skeleton.named_modules() if module is head), None)
    if head is None or prefix is None:
        return None
    names = {p: f"{prefix}.{p}" for p, _ in head.named_parameters()}  # "weight" -> "lm_head.weight"
    tensors = _checkpoint_tensors(source, kwargs.get("revision"), set(names.values()))
    if tensors is None:
        return None
    head = head.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for name, param in head.named_parameters():
            param.copy_(tensors[names[name]])
    return head


def _checkpoint_tensors(source: str, revision: str | None, names: set[str]) -> dict[str, torch.Tensor] | None:
    """The named tensors from a checkpoint's safetensors (one file or an index of shards); None where any is missing."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        return cached_file(source, filename, revision=revision, _raise_exceptions_for_missing_entries=False)

    index = find("model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        if not names <= weight_map.keys():
            return None
        files = {name: find(weight_map[name]) for name in names}
    else:
        files = dict.fromkeys(names, find("model.safetensors"))
    tensors = {}
    for name, file in files.items():
        if file is None:
            return None
        with safe_open(file, "pt") as f:
            if name not in f.keys():  # noqa: SIM118 (a safetensors file, not a dict)
                return None
            tensors[name] = f.get_tensor(name)
    return tensors


def sentence_nll(
    hidden: torch.Tensor,
    head: LMHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_logits: int = MAX_LOGITS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sentence of a padded batch (either side), the sum of next-token negative log-likelihoods (float64) and
    the number of predicted tokens: each own token after the first, predicted from the one before it.

    hidden [batch, seq, d_model] final hidden states (the base model's hidden_states[-1], final norm applied);
    input_ids, attention_mask [batch, seq]. Logits exist max_logits at a time (whole positions, at least one)."""
    mask = attention_mask.to(input_ids.device) != 0
    valid = mask[:, :-1] & mask[:, 1:]  # position t predicts t + 1: both the sentence's own tokens
    rows, pos = valid.nonzero(as_tuple=True)
    targets = input_ids[rows, pos + 1]
    nll = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=head.weight.device)
    step = max(1, max_logits // head.vocab_size)
    for start in range(0, len(rows), step):
        r, p = rows[start : start + step], pos[start : start + step]
        logits = head.logits(hidden[r.to(hidden.device), p.to(hidden.device)])  # [chunk, vocab]
        target = targets[start : start + step].to(logits.device).unsqueeze(-1)
        token_nll = torch.logsumexp(logits, -1) - logits.gather(-1, target).squeeze(-1)
        nll.index_add_(0, r.to(nll.device), token_nll.to(torch.float64))
    return nll, valid.sum(-1).to(nll.device)


class NLLRecorder:
    """The extractor's per-batch callback (`on_batch`): per sentence, in input order, NLL sums and predicted-token
    counts from the batch's final hidden states, computed on the device while they exist."""

    def __init__(self, head: LMHead, n: int, max_logits: int = MAX_LOGITS) -> None:
        self.head = head
        self.max_logits = max_logits
        self.nll = torch.zeros(n, dtype=torch.float64, device=head.weight.device)  # [n]
        self.n_predicted = torch.zeros(n, dtype=torch.long, device=head.weight.device)  # [n]

    def __call__(self, rows: list[int], input_ids: torch.Tensor, mask: torch.Tensor, hidden_states) -> None:
        nll, count = sentence_nll(hidden_states[-1], self.head, input_ids, mask, self.max_logits)
        index = torch.tensor(rows, device=self.nll.device)
        self.nll[index] = nll
        self.n_predicted[index] = count


def perplexity(nll_sum: torch.Tensor, n_predicted: torch.Tensor) -> float:
    """exp(total NLL / total predicted tokens): exact over any subset of sentences."""
    return float(torch.exp(nll_sum.sum(dtype=torch.float64) / n_predicted.sum()))
