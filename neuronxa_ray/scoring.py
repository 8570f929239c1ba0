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
and MRR the mean of 1 / rank (0 without a rank). These rows form the lake's `matches` table (see lake.py).

compute_pairs() gives every (pivot language, language) pair of a checkpoint from its stored states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake, WrittenFile, matches_table

log = logging.getLogger(__name__)


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


def _resolve_pivots(pivots: list[str] | str | None, languages: list[str]) -> list[str]:
    if pivots is None or pivots == "all":
        return list(languages)
    if isinstance(pivots, str) or not all(isinstance(p, str) for p in pivots):
        raise NeuronxaError(f"pivots = {pivots!r}: must be 'all' or a list of language codes")
    unknown = sorted(set(pivots) - set(languages))
    if unknown:
        raise NeuronxaError(f"pivots {unknown} are not among the languages {sorted(languages)}")
    return list(pivots)


def compute_pairs(
    lake: Lake | str,
    model: str,
    checkpoint: str,
    languages: list[str],
    pivots: list[str] | str | None = "all",
    device: str | torch.device = "cpu",
    base_pivot: str | None = None,
) -> int:
    """Write `matches` for every (pivot, lang) pair of a checkpoint's languages from their stored states.

    Each language's forward pass ran once, against the job's pivot `base_pivot` (default: languages[0]); its
    completion marker names its stored states. Here every other pair's cosine matrices are one float64 matmul
    per method on `device`, reduced at once to match results, and written with a marker naming the two source
    markers: views count a pair only while both verify with the same checkpoint fingerprint. Pairs already
    written (and still current) are skipped. Holds the states of the languages involved in host memory.
    Returns the rows written."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    base = base_pivot or languages[0]
    pivot_langs = _resolve_pivots(pivots, languages)
    sources = {lang: lake.completion(model, checkpoint, base, lang) for lang in languages}
    missing = [
        lang
        for lang, record in sources.items()
        if record is None or not any(f.get("table") == "sentence_states" for f in record.get("files", []))
    ]
    if missing:
        raise NeuronxaError(
            f"languages {missing} of {model!r} @ {checkpoint!r} have no stored states in {lake.uri!r}: "
            "every pair needs sentence_states (run with store_states: true)"
        )
    fingerprint = sources[base].get("checkpoint_fingerprint", "")

    def pair_fingerprint(p: str, lang: str) -> str:
        return "+".join(sources[x]["fingerprint"] for x in (p, lang))

    def current(p: str, lang: str) -> bool:
        record = sources[lang] if p == base else lake.completion(model, checkpoint, p, lang)
        if record is None or record.get("checkpoint_fingerprint") != fingerprint:
            return False
        if p != base and record.get("fingerprint") != pair_fingerprint(p, lang):
            return False  # a source language was recomputed (other text) since this pair was
        return any(f.get("table") == "matches" for f in record.get("files", []))

    todo = {p: [lang for lang in languages if lang != p and not current(p, lang)] for p in pivot_langs}
    todo = {p: langs for p, langs in todo.items() if langs}
    if not todo:
        return 0
    needed = sorted(set(todo) | {lang for langs in todo.values() for lang in langs})
    rows = 0
    with torch.inference_mode():
        # Each language's states normalised once ([layers, n, dim] float64 unit rows on the device): a pair is
        # then one batched matmul, bit for bit the worker's cosine_matrices.
        unit = {
            lang: {
                m: normalize_states(torch.from_numpy(a).to(device))
                for m, a in lake.read_states(model, checkpoint, lang).items()
            }
            for lang in needed
        }
        for p, langs in todo.items():
            for lang in langs:
                stats = {}
                for method, P in unit[p].items():
                    if method not in unit[lang]:
                        raise NeuronxaError(f"{lang!r} has no stored {method!r} states (pivot {p!r} has)")
                    if P.shape[1] != unit[lang][method].shape[1]:
                        raise NeuronxaError(f"parallel sentences needed: {p!r} and {lang!r} differ in length")
                    stats[method] = match_stats(torch.bmm(P, unit[lang][method].transpose(1, 2))).numpy()
                table = matches_table(model, checkpoint, p, lang, stats)
                written = lake.write("matches", table, lake.language_file("matches", model, checkpoint, lang, p))
                if p == base:  # the language's own marker gains its matches file
                    record = sources[lang]
                    files = [WrittenFile.from_record(f) for f in record["files"]]
                    files = [f for f in files if f.path != written.path] + [written]
                    info = {k: v for k, v in record.items() if k not in ("fingerprint", "files")}
                    lake.mark_done(model, checkpoint, p, lang, record["fingerprint"], info, files)
                else:
                    info = {
                        "checkpoint_fingerprint": fingerprint,
                        "n_sentences": len(table["sentence"]) // max(1, len(stats)),
                        "sources": [lake.done_marker(model, checkpoint, base, x) for x in (p, lang)],
                    }
                    lake.mark_done(model, checkpoint, p, lang, pair_fingerprint(p, lang), info, [written])
                rows += len(table["sentence"])
            log.info("pivot %s: matches for %d languages", p, len(langs))
    return rows
