"""Cosine matrices and their per-sentence match results, computed on the device (torch, float64).

A score needs, per layer and pivot sentence i, only O(1) numbers out of the O(n) row and column of C:
  diagonal       C[i, i]
  row_rival      max over j != i of C[i, j]   (best wrong lang sentence for pivot sentence i; NaN ignored)
  column_rival   max over j != i of C[j, i]   (best wrong pivot sentence for lang sentence i; NaN ignored)
  row_hit        diagonal > row_rival    (strict: a tie is a miss; a NaN diagonal never hits; no rival: a hit)
  column_hit     diagonal > column_rival
  row_rank       1 + #{j != i : C[i, j] >= C[i, i]}  (ties count against the partner, so rank 1 <=> row_hit;
  column_rank    1 + #{j != i : C[j, i] >= C[i, i]}   NaN rivals never count; a NaN diagonal has no rank)
The mutual-NN score of a layer is the share of i with row_hit AND column_hit (NeuronXA / MEXA); retrieval
accuracy is the share of row_hit (pivot -> lang) or column_hit (lang -> pivot); P@k is the share with rank <= k
and MRR the mean of 1 / rank (0 without a rank). These rows form the lake's `matches` table (see the lake's schema).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neuronxa_ray.errors import NeuronxaError


def normalize_states(states: torch.Tensor) -> torch.Tensor:
    """[n, layers, dim] -> [layers, n, dim] float64 unit rows; a zero or NaN state becomes NaN (0/0)."""
    x = states.double().transpose(0, 1)
    return x / x.norm(dim=-1, keepdim=True)


def cosine_matrices(pivot: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[n, layers, dim] x [m, layers, dim] -> [layers, n, m] float64 cosine; a zero or NaN state gives NaN."""
    return torch.bmm(normalize_states(pivot), normalize_states(other).transpose(1, 2))


@dataclass
class MatchStats:
    """Per (layer, sentence) match results of one cosine stack, each [layers, n] (see the module docstring).

    Rivals are NaN where a row or column has no non-NaN rival; ranks are -1 where the diagonal is NaN."""

    diagonal: torch.Tensor
    row_rival: torch.Tensor
    column_rival: torch.Tensor
    row_hit: torch.Tensor
    column_hit: torch.Tensor
    row_rank: torch.Tensor
    column_rank: torch.Tensor

    def numpy(self) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in self.__dict__.items()}


def match_stats(C: torch.Tensor) -> MatchStats:
    """C [layers, n, n] float64 (row i: pivot sentence i; column j: lang sentence j; NaN: zero state) -> MatchStats.

    Decisions compare the float64 values of C exactly as the cell-based SQL (`mutual_nn('similarity_cells')`)
    does, so hits are identical bit for bit. O(layers * n^2) on C's device, O(layers * n) out."""
    if C.dim() != 3 or C.shape[1] != C.shape[2]:
        raise NeuronxaError(f"match_stats needs C of shape [layers, n, n] (parallel sentences), got {tuple(C.shape)}")
    C = C.double()
    inf = float("inf")
    diagonal = C.diagonal(dim1=1, dim2=2)  # [layers, n]
    rivals = torch.nan_to_num(C, nan=-inf, posinf=inf, neginf=-inf)  # NaN never wins (a copy of C)
    rivals.diagonal(dim1=1, dim2=2).fill_(-inf)  # nor does the diagonal itself
    row_best = rivals.amax(dim=2)
    column_best = rivals.amax(dim=1)
    valid = ~diagonal.isnan()
    row_hit = valid & (diagonal > row_best)
    column_hit = valid & (diagonal > column_best)
    # 1 + rivals >= the diagonal: counting j = i itself (C[i,i] >= C[i,i]) supplies the 1; NaN compares False
    row_rank = (diagonal.unsqueeze(2) <= C).sum(dim=2, dtype=torch.int32)
    column_rank = (diagonal.unsqueeze(1) <= C).sum(dim=1, dtype=torch.int32)
    no_rank = torch.tensor(-1, dtype=torch.int32, device=C.device)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=C.device)
    return MatchStats(
        diagonal=diagonal.clone(),
        row_rival=torch.where(row_best == -inf, nan, row_best),
        column_rival=torch.where(column_best == -inf, nan, column_best),
        row_hit=row_hit,
        column_hit=column_hit,
        row_rank=torch.where(valid, row_rank.to(torch.int32), no_rank),
        column_rank=torch.where(valid, column_rank.to(torch.int32), no_rank),
    )


def matches_of(pivot: torch.Tensor, other: torch.Tensor) -> dict[str, np.ndarray]:
    """Pivot and language states [n, layers, dim] (same device) -> host MatchStats arrays, [layers, n] each."""
    if pivot.shape[0] != other.shape[0]:
        raise NeuronxaError(f"parallel sentences needed: pivot has {pivot.shape[0]}, the language {other.shape[0]}")
    return match_stats(cosine_matrices(pivot, other)).numpy()
