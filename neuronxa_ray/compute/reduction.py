"""The hooks' reductions: one FFN activation or hidden state [batch, seq, dim] -> per-sentence sums [batch, ., dim].

Two implementations of the same arithmetic:
- a fused Triton kernel (CUDA; or Triton's interpreter, TRITON_INTERPRET=1, on CPU tensors in the tests) that reads
  the activation once, in its own dtype (bf16/fp16/fp32), and accumulates in float32: no full-size float32 copy,
  no separate sign / clamp / abs passes, one launch per layer;
- torch (CPU, float64, no Triton): float32 and float64 activations reduce exactly as they always have (bit for bit:
  the float64 reference tests and MEXA equality rest on it); half-precision activations are cast to float32 one
  slice of the sequence at a time, so no full-size float32 copy is made there either.

NEURONXA_RAY_REDUCTION=torch|triton|auto (default auto: Triton for CUDA tensors when it is installed) chooses.

Per sentence b and neuron f, with w the position weights and m the 0/1 mask of b's own tokens:
  ffn_sums(act, w, m) -> pos [batch, 2, d_ff]: (sum_t w_t 1[a_t > 0], sum_t m_t 1[a_t > 0])
                         mag [batch, 2, d_ff]: (sum_t w_t |a_t|,    sum_t m_t |a_t|)
  pooled_sum(h, w, m) -> [batch, d_model]: sum_t w_t h_t
Padded positions never count, even when they hold NaN; a NaN activation at an own token gives a NaN sum.
"""

from __future__ import annotations

import functools
import math
import os

import torch

_HALF = (torch.bfloat16, torch.float16)
SLICE_ELEMENTS = 1 << 22  # torch path, half inputs: float32 slices of at most this many elements (16 MB)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 activations (the test reference) stay float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _triton():
    """The compiled kernels, or None when Triton is not installed."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def ffn_kernel(
        act_ptr, w_ptr, m_ptr, out_ptr, S, F, s_ab, s_as, s_wb, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr
    ):
        b = tl.program_id(0)
        f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        f_ok = f < F
        w_pos = tl.zeros([BLOCK_F], dtype=tl.float32)
        n_pos = tl.zeros([BLOCK_F], dtype=tl.float32)
        w_mag = tl.zeros([BLOCK_F], dtype=tl.float32)
        n_mag = tl.zeros([BLOCK_F], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_ok = s < S
            w = tl.load(w_ptr + b * s_wb + s, mask=s_ok, other=0.0)
            m = tl.load(m_ptr + b * s_wb + s, mask=s_ok, other=0.0)
            x = tl.load(act_ptr + b * s_ab + s[:, None] * s_as + f[None, :], mask=s_ok[:, None] & f_ok[None, :])
            x = x.to(tl.float32)
            own = m[:, None] > 0
            pos = tl.where(own, tl.where(x == x, tl.where(x > 0, 1.0, 0.0), float("nan")), 0.0)
            mag = tl.where(own, tl.abs(x), 0.0)
            w_pos += tl.sum(w[:, None] * pos, axis=0)
            n_pos += tl.sum(pos, axis=0)
            w_mag += tl.sum(w[:, None] * mag, axis=0)
            n_mag += tl.sum(mag, axis=0)
        out = out_ptr + b * 4 * F + f
        tl.store(out, w_pos, mask=f_ok)
        tl.store(out + F, n_pos, mask=f_ok)
        tl.store(out + 2 * F, w_mag, mask=f_ok)
        tl.store(out + 3 * F, n_mag, mask=f_ok)

    @triton.jit
    def pool_kernel(x_ptr, w_ptr, m_ptr, out_ptr, S, D, s_xb, s_xs, s_wb, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s_ok = s < S
            w = tl.load(w_ptr + b * s_wb + s, mask=s_ok, other=0.0)
            m = tl.load(m_ptr + b * s_wb + s, mask=s_ok, other=0.0)
            x = tl.load(x_ptr + b * s_xb + s[:, None] * s_xs + d[None, :], mask=s_ok[:, None] & d_ok[None, :])
            x = tl.where(m[:, None] > 0, x.to(tl.float32), 0.0)
            acc += tl.sum(w[:, None] * x, axis=0)
        tl.store(out_ptr + b * D + d, acc, mask=d_ok)

    return triton, ffn_kernel, pool_kernel


def use_triton(x: torch.Tensor) -> bool:
    """Whether the fused kernels reduce x (see the module docstring for the switch)."""
    choice = os.environ.get("NEURONXA_RAY_REDUCTION", "auto")
    if choice == "torch" or x.dtype == torch.float64:
        return False
    if choice == "triton":
        if _triton() is None:
            raise RuntimeError("NEURONXA_RAY_REDUCTION=triton, but Triton is not installed")
        return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return x.is_cuda and _triton() is not None


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def ffn_sums(act: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """act [batch, seq, d_ff]; weights [batch, 2, seq] in the accumulation dtype (row 0 position weights, row 1 the
    0/1 mask); valid [batch, seq, 1] bool or None (set when padded positions may hold NaN) -> (pos, mag) sums, each
    [batch, 2, d_ff] in the accumulation dtype (see the module docstring)."""
    if use_triton(act):
        return _ffn_triton(act, weights)
    if act.dtype in _HALF:
        return _ffn_sliced(act, weights, valid)
    # 1[act > 0] as sign(act) clamped at 0: the same values, three times faster on CPU than a bool->float cast
    positive = torch.sign(act).clamp_(min=0)
    magnitude = act.abs()
    if valid is not None:  # left padding: padded rows may hold NaN, and NaN x 0 weight is still NaN
        positive.masked_fill_(~valid, 0.0)
        magnitude.masked_fill_(~valid, 0.0)
    return torch.bmm(weights, positive), torch.bmm(weights, magnitude)


def _ffn_sliced(act, weights, valid) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-precision activations in float32 slices along the sequence (never a full-size float32 copy)."""
    batch, seq, d_ff = act.shape
    step = max(1, min(math.ceil(seq / 4), SLICE_ELEMENTS // max(1, batch * d_ff)))
    pos = weights.new_zeros(batch, 2, d_ff)
    mag = weights.new_zeros(batch, 2, d_ff)
    for s in range(0, seq, step):
        x = act[:, s : s + step].to(weights.dtype)
        positive = torch.sign(x).clamp_(min=0)
        magnitude = x.abs_()
        if valid is not None:
            positive.masked_fill_(~valid[:, s : s + step], 0.0)
            magnitude.masked_fill_(~valid[:, s : s + step], 0.0)
        w = weights[:, :, s : s + step]
        pos.baddbmm_(w, positive)
        mag.baddbmm_(w, magnitude)
    return pos, mag


def _ffn_triton(act: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    triton, ffn_kernel, _ = _triton()
    act = _rows(act)
    batch, seq, d_ff = act.shape
    w = weights.to(torch.float32).contiguous()
    out = torch.empty(batch, 4, d_ff, device=act.device, dtype=torch.float32)
    block_f = 128
    grid = (batch, triton.cdiv(d_ff, block_f))
    ffn_kernel[grid](
        act, w[:, 0], w[:, 1], out, seq, d_ff, act.stride(0), act.stride(1), w.stride(0), BLOCK_S=16, BLOCK_F=block_f
    )
    return out[:, 0:2], out[:, 2:4]


def pooled_sum(h: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, left_padded: bool) -> torch.Tensor:
    """h [batch, seq, d_model] -> [batch, d_model] position-weighted sum in the accumulation dtype; weights [batch,
    seq] (accumulation dtype), mask [batch, seq] 0/1."""
    if use_triton(h):
        triton, _, pool_kernel = _triton()
        h = _rows(h)
        batch, seq, d_model = h.shape
        w = weights.to(torch.float32).contiguous()
        m = mask.to(torch.float32).contiguous()
        out = torch.empty(batch, d_model, device=h.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(d_model, 128))
        pool_kernel[grid](h, w, m, out, seq, d_model, h.stride(0), h.stride(1), w.stride(0), BLOCK_S=16, BLOCK_D=128)
        return out
    h = h.to(device=weights.device, dtype=accumulation_dtype(h.dtype))
    if left_padded:
        h = h.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
    return torch.bmm(weights.unsqueeze(1), h).squeeze(1)
