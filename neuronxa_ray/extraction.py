"""Hooked forward passes that reduce FFN activations and hidden states to sentence states on the device.

Per sentence and layer (NeuronXA, Huang et al. 2025; MEXA, Kargaran et al. 2024):
  nas         position-weighted mean of 1[activation > 0]        [n, n_layers, d_ff]
  nav         position-weighted mean of |activation|             [n, n_layers, d_ff]
  hidden      position-weighted mean of the hidden state         [n, n_layers + 1, d_model]
  hidden_last hidden state of the sentence's last token          [n, n_layers + 1, d_model]
Token t of a sentence of T tokens (1-based, its own tokens only) weighs t / (1 + ... + T), whatever the padding.
Per layer and neuron, over all tokens of the language: tokens with activation > 0, sum of |activation|.
Nothing per token leaves the hook: each layer's [batch, seq, d_ff] activation is reduced where it is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from neuronxa_ray.models import LoadedModel, tokenize
from neuronxa_ray.scoring import cosine_matrices  # noqa: F401  (moved to scoring.py; kept importable from here)

log = logging.getLogger(__name__)

METHODS = ("nas", "nav", "hidden", "hidden_last")


@dataclass
class LanguageStates:
    """All states of one language's sentences, in input order, on the extractor's device."""

    nas: torch.Tensor  # [n, n_layers, d_ff] float32
    nav: torch.Tensor  # [n, n_layers, d_ff] float32
    hidden: torch.Tensor  # [n, n_layers + 1, d_model] float32
    hidden_last: torch.Tensor  # [n, n_layers + 1, d_model] float32
    n_active: torch.Tensor  # [n_layers, d_ff] float64: tokens with activation > 0
    abs_sum: torch.Tensor  # [n_layers, d_ff] float64: sum of |activation| over tokens
    n_tokens: int  # tokens seen (the denominator of n_active and abs_sum)
    token_counts: list[int]  # tokens per sentence, in input order

    def state(self, method: str) -> torch.Tensor:
        return getattr(self, method)


def pad_batch(ids: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ([batch, seq] input ids, [batch, seq] 0/1 attention mask), padded on one side."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, x in enumerate(ids):
        span = slice(0, len(x)) if side == "right" else slice(width - len(x), width)
        input_ids[b, span] = torch.tensor(x, dtype=torch.long)
        mask[b, span] = 1
    return input_ids, mask


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 models (the test reference) stay float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def position_weights(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> [batch, seq] float64 weights t / sum(1..T) on own tokens, 0 on padding."""
    mask = attention_mask.to(torch.float64)
    t = mask.cumsum(-1) * mask
    n = mask.sum(-1, keepdim=True)
    return t / (n * (n + 1) / 2)


@dataclass
class _BatchContext:
    weights: torch.Tensor  # [batch, 2, seq]: row 0 position weights, row 1 the 0/1 mask
    valid: torch.Tensor | None  # [batch, seq, 1] bool, set only when padded positions may hold NaN
    rows: torch.Tensor  # [batch] output rows of this batch's sentences


class StateExtractor:
    """Extracts LanguageStates for lists of sentences with one loaded model; reusable across languages."""

    def __init__(
        self,
        lm: LoadedModel,
        batch_size: int = 16,
        max_length: int | None = None,
        padding_side: str = "right",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.lm = lm
        self.batch_size = batch_size
        self.max_length = max_length
        self.padding_side = padding_side
        self.n_layers = len(lm.blocks)
        self._ctx: _BatchContext | None = None
        self._out: LanguageStates | None = None
        self._handles = []
        for layer, module in enumerate(lm.hook_modules):
            if lm.hook_site == "act":
                hook = module.register_forward_hook(self._make_output_hook(layer))
            else:
                hook = module.register_forward_pre_hook(self._make_input_hook(layer))
            self._handles.append(hook)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _make_output_hook(self, layer: int):
        def hook(module, args, output):  # blocks.{layer}.mlp.act
            self._reduce(layer, output)

        return hook

    def _make_input_hook(self, layer: int):
        def hook(module, args):  # blocks.{layer}.mlp.down_in
            self._reduce(layer, args[0])

        return hook

    def _reduce(self, layer: int, act: torch.Tensor) -> None:
        """act [batch, seq, d_ff] -> nas/nav rows [batch, d_ff] and per-neuron counters, all on the device."""
        ctx, out = self._ctx, self._out
        if ctx is None or out is None:
            return  # a forward pass outside extract(): nothing to record
        act = act.to(_accumulation_dtype(act.dtype))  # bf16/fp16 models accumulate in float32
        if out.nas.numel() == 0:  # first batch: d_ff is known only now (configs name it differently)
            n, d_ff = out.nas.shape[0], act.shape[-1]
            out.nas = act.new_zeros(n, self.n_layers, d_ff)
            out.nav = act.new_zeros(n, self.n_layers, d_ff)
            out.n_active = act.new_zeros(self.n_layers, d_ff, dtype=torch.float64)
            out.abs_sum = act.new_zeros(self.n_layers, d_ff, dtype=torch.float64)
        # 1[act > 0] as sign(act) clamped at 0: the same values, three times faster on CPU than a bool->float cast
        positive = torch.sign(act).clamp_(min=0)
        magnitude = act.abs()
        if ctx.valid is not None:  # left padding: padded rows may hold NaN, and NaN x 0 weight is still NaN
            positive.masked_fill_(~ctx.valid, 0.0)
            magnitude.masked_fill_(~ctx.valid, 0.0)
        weights = ctx.weights if ctx.weights.device == act.device else ctx.weights.to(act.device)  # multi-GPU
        pos_sums = torch.bmm(weights, positive).to(out.nas.device)  # [batch, 2, d_ff]: weighted mean, count
        mag_sums = torch.bmm(weights, magnitude).to(out.nas.device)
        out.nas[ctx.rows, layer] = pos_sums[:, 0]
        out.nav[ctx.rows, layer] = mag_sums[:, 0]
        out.n_active[layer] += pos_sums[:, 1].sum(0, dtype=torch.float64)
        out.abs_sum[layer] += mag_sums[:, 1].sum(0, dtype=torch.float64)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if self.lm.tokenizer is None:
            raise ValueError("this model was loaded without its tokenizer: pass token ids to extract_ids")
        return tokenize(self.lm.tokenizer, texts, self.max_length)

    def _pad(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad_id = self.lm.tokenizer.pad_token_id if self.lm.tokenizer is not None else 0  # masked: any id will do
        return pad_batch(ids, pad_id, self.padding_side)

    def extract(self, texts: list[str]) -> LanguageStates:
        """Run all sentences (batched, longest first) and return their states in input order."""
        if not texts:
            raise ValueError("no sentences to extract")
        return self.extract_ids(self.tokenize(texts))

    @torch.inference_mode()
    def extract_ids(self, ids: list[list[int]]) -> LanguageStates:
        """The same for already tokenized sentences (token ids, special tokens included)."""
        if not ids:
            raise ValueError("no sentences to extract")
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise ValueError(f"sentences {empty[:5]} tokenize to nothing")
        dev = self.lm.device
        n, n_layers = len(ids), self.n_layers
        out = None
        order = sorted(range(n), key=lambda i: -len(ids[i]))  # similar lengths together: little padding
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            input_ids, mask = self._pad([ids[i] for i in rows])
            input_ids, mask = input_ids.to(dev), mask.to(dev)
            weights = position_weights(mask)
            left_padded = self.padding_side == "left" and bool((mask[:, 0] == 0).any())
            acc = _accumulation_dtype(self.lm.dtype)
            weights = weights.to(acc)
            self._ctx = _BatchContext(
                weights=torch.stack([weights, mask.to(acc)], dim=1),
                valid=mask.bool().unsqueeze(-1) if left_padded else None,
                rows=torch.tensor(rows, device=dev),
            )
            if out is None:
                out = _empty_states(n, n_layers, dev)
            self._out = out
            try:
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                result = self.lm.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    output_hidden_states=True,
                    use_cache=False,
                )
            finally:
                self._ctx, self._out = None, None
            self._pool_hidden(out, result.hidden_states, weights, mask, rows, left_padded)
        out.n_tokens = sum(len(x) for x in ids)
        out.token_counts = [len(x) for x in ids]
        return out

    @staticmethod
    def _pool_hidden(out, hidden_states, weights, mask, rows, left_padded) -> None:
        rows_t = torch.tensor(rows, device=weights.device)
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # index of each sentence's last own token
        batch = torch.arange(mask.shape[0], device=weights.device)
        w = weights.unsqueeze(1)  # [batch, 1, seq]
        if out.hidden.numel() == 0:
            n, d_model = out.hidden.shape[0], hidden_states[0].shape[-1]
            out.hidden = weights.new_zeros(n, len(hidden_states), d_model)
            out.hidden_last = weights.new_zeros(n, len(hidden_states), d_model)
        for layer, h in enumerate(hidden_states):  # [batch, seq, d_model]
            h = h.to(device=weights.device, dtype=_accumulation_dtype(h.dtype))
            if left_padded:
                h = h.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
            out.hidden[rows_t, layer] = torch.bmm(w, h).squeeze(1)
            out.hidden_last[rows_t, layer] = h[batch, last]


def _empty_states(n: int, n_layers: int, device: torch.device) -> LanguageStates:
    """Placeholders sized [n, 0, 0]; the hooks allocate the real buffers once dimensions are seen."""
    empty = torch.zeros(n, 0, 0, device=device)
    return LanguageStates(empty, empty, empty, empty, empty, empty, 0, [])
