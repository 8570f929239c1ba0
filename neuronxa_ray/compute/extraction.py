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

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from neuronxa_ray.compute.reduction import accumulation_dtype, ffn_sums, pooled_sum
from neuronxa_ray.model.load import LoadedModel, tokenize

log = logging.getLogger(__name__)

BatchCallback = Callable[[list[int], torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], None]


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


def plan_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Sentence indices in batches, longest first (similar lengths together: little padding). With batch_tokens,
    each batch holds as many sentences as fit that many padded tokens (rows x its longest sentence; a sentence
    longer than the budget runs alone); otherwise batch_size sentences."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not batch_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class StateExtractor:
    """Extracts LanguageStates for lists of sentences with one loaded model; reusable across languages. Its hooks
    exist only while extract_ids runs (added on entry, removed in `finally`)."""

    def __init__(
        self,
        lm: LoadedModel,
        batch_size: int = 16,
        max_length: int | None = None,
        padding_side: str = "right",
        batch_tokens: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if batch_tokens is not None and batch_tokens < 0:
            raise ValueError(f"batch_tokens must be >= 0, got {batch_tokens!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.lm = lm
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_length = max_length
        self.padding_side = padding_side
        self.n_layers = len(lm.blocks)
        self._ctx: _BatchContext | None = None
        self._out: LanguageStates | None = None

    @contextlib.contextmanager
    def hooks(self):
        """The reducing hooks on every block's FFN activation (blocks.{i}.mlp.act), for the duration of a call."""
        handles = []
        try:
            for layer, module in enumerate(self.lm.hook_modules):
                if self.lm.hook_site == "act":
                    handles.append(module.register_forward_hook(self._make_output_hook(layer)))
                else:
                    handles.append(module.register_forward_pre_hook(self._make_input_hook(layer)))
            yield
        finally:
            for handle in handles:
                handle.remove()

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
        if out.nas.numel() == 0:  # first batch: d_ff is known only now (configs name it differently)
            n, d_ff, acc = out.nas.shape[0], act.shape[-1], accumulation_dtype(act.dtype)
            out.nas = act.new_zeros(n, self.n_layers, d_ff, dtype=acc)
            out.nav = act.new_zeros(n, self.n_layers, d_ff, dtype=acc)
            out.n_active = act.new_zeros(self.n_layers, d_ff, dtype=torch.float64)
            out.abs_sum = act.new_zeros(self.n_layers, d_ff, dtype=torch.float64)
        weights = ctx.weights if ctx.weights.device == act.device else ctx.weights.to(act.device)  # multi-GPU
        valid = None if ctx.valid is None else ctx.valid.to(act.device)
        pos_sums, mag_sums = ffn_sums(act, weights, valid)  # each [batch, 2, d_ff]: weighted mean, count
        pos_sums, mag_sums = pos_sums.to(out.nas.device), mag_sums.to(out.nas.device)
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

    def extract(self, texts: list[str], on_batch: BatchCallback | None = None) -> LanguageStates:
        """Run all sentences (batched, longest first) and return their states in input order."""
        if not texts:
            raise ValueError("no sentences to extract")
        return self.extract_ids(self.tokenize(texts), on_batch)

    @torch.inference_mode()
    def extract_ids(self, ids: list[list[int]], on_batch: BatchCallback | None = None) -> LanguageStates:
        """The same for already tokenized sentences (token ids, special tokens included). on_batch, if given, is
        called after each batch's forward pass with (rows, input_ids, attention_mask, hidden_states): the batch's
        sentence indices, its padded [batch, seq] ids and mask on the device, and the model's hidden states."""
        if not ids:
            raise ValueError("no sentences to extract")
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise ValueError(f"sentences {empty[:5]} tokenize to nothing")
        dev = self.lm.device
        n, n_layers = len(ids), self.n_layers
        out = None
        batches = plan_batches([len(x) for x in ids], self.batch_size, self.batch_tokens)
        with self.hooks():
            for rows in batches:
                out = self._run_batch(ids, rows, out, n, n_layers, dev, on_batch)
        out.n_tokens = sum(len(x) for x in ids)
        out.token_counts = [len(x) for x in ids]
        return out

    def _run_batch(self, ids, rows, out, n, n_layers, dev, on_batch=None) -> LanguageStates:
        """One padded batch through the hooked model: FFN sums by the hooks, hidden states pooled after."""
        input_ids, mask = self._pad([ids[i] for i in rows])
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        weights = position_weights(mask)
        left_padded = self.padding_side == "left" and bool((mask[:, 0] == 0).any())
        acc = accumulation_dtype(self.lm.dtype)
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
        if on_batch is not None:
            on_batch(rows, input_ids, mask, result.hidden_states)
        return out

    @staticmethod
    def _pool_hidden(out, hidden_states, weights, mask, rows, left_padded) -> None:
        rows_t = torch.tensor(rows, device=weights.device)
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # index of each sentence's last own token
        batch = torch.arange(mask.shape[0], device=weights.device)
        if out.hidden.numel() == 0:
            n, d_model = out.hidden.shape[0], hidden_states[0].shape[-1]
            out.hidden = weights.new_zeros(n, len(hidden_states), d_model)
            out.hidden_last = weights.new_zeros(n, len(hidden_states), d_model)
        for layer, h in enumerate(hidden_states):  # [batch, seq, d_model]
            h = h.to(weights.device)
            out.hidden[rows_t, layer] = pooled_sum(h, weights, mask, left_padded)
            out.hidden_last[rows_t, layer] = h[batch, last].to(out.hidden_last.dtype)


def _empty_states(n: int, n_layers: int, device: torch.device) -> LanguageStates:
    """Placeholders sized [n, 0, 0]; the hooks allocate the real buffers once dimensions are seen."""
    empty = torch.zeros(n, 0, 0, device=device)
    return LanguageStates(empty, empty, empty, empty, empty, empty, 0, [])
