"""Every (pivot, language) pair of a checkpoint from its stored states, after the forward passes: one float64
matmul per method and pair, matched on the device, written with a marker that names the two source markers.
"""

from __future__ import annotations

import logging

import torch

from neuronxa_ray.compute.matching import match_stats, normalize_states
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake, WrittenFile, matches_table, pair_fingerprint
from neuronxa_ray.planning.pivot import resolve_pivots
from neuronxa_ray.worker.writer import commit_unit

log = logging.getLogger(__name__)


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
    pivot_langs = resolve_pivots(pivots, languages)
    pairs = _Pairs(lake if isinstance(lake, Lake) else Lake(lake), model, checkpoint, languages, base_pivot)
    todo = {p: [lang for lang in languages if lang != p and not pairs.current(p, lang)] for p in pivot_langs}
    todo = {p: langs for p, langs in todo.items() if langs}
    if not todo:
        return 0
    rows = 0
    with torch.inference_mode():
        unit = pairs.unit_states(sorted(set(todo) | {lang for langs in todo.values() for lang in langs}), device)
        for p, langs in todo.items():
            for lang in langs:
                rows += pairs.commit(p, lang, _match(unit, p, lang))
            log.info("pivot %s: matches for %d languages", p, len(langs))
    return rows


class _Pairs:
    """One checkpoint's languages as sources of pairs: their markers (each with stored states), what is current."""

    def __init__(self, lake: Lake, model: str, checkpoint: str, languages: list[str], base: str | None) -> None:
        self.lake, self.model, self.checkpoint = lake, model, checkpoint
        self.base = base or languages[0]
        self.sources = {lang: lake.completion(model, checkpoint, self.base, lang) for lang in languages}
        missing = [
            lang
            for lang, record in self.sources.items()
            if record is None or not any(f.get("table") == "sentence_states" for f in record.get("files", []))
        ]
        if missing:
            raise NeuronxaError(
                f"languages {missing} of {model!r} @ {checkpoint!r} have no stored states in {lake.uri!r}: "
                "every pair needs sentence_states (run with store_states: true)"
            )
        self.fingerprint = self.sources[self.base].get("checkpoint_fingerprint", "")

    def fingerprint_of(self, p: str, lang: str) -> str:
        return pair_fingerprint(self.sources[p]["fingerprint"], self.sources[lang]["fingerprint"])

    def current(self, p: str, lang: str) -> bool:
        """The pair is written, under this checkpoint fingerprint, from the sources as they are now."""
        record = self.sources[lang] if p == self.base else self.lake.completion(self.model, self.checkpoint, p, lang)
        if record is None or record.get("checkpoint_fingerprint") != self.fingerprint:
            return False
        if p != self.base and record.get("fingerprint") != self.fingerprint_of(p, lang):
            return False  # a source language was recomputed (other text) since this pair was
        return any(f.get("table") == "matches" for f in record.get("files", []))

    def unit_states(self, langs: list[str], device) -> dict[str, dict[str, torch.Tensor]]:
        """Each language's states normalised once ([layers, n, dim] float64 unit rows on the device): a pair is
        then one batched matmul, bit for bit the worker's cosine_matrices."""
        read = self.lake.read_states
        return {
            lang: {
                m: normalize_states(torch.from_numpy(a).to(device))
                for m, a in read(self.model, self.checkpoint, lang).items()
            }
            for lang in langs
        }

    def commit(self, p: str, lang: str, stats: dict) -> int:
        """The pair's matches, with the language's own marker (against the base pivot) or a pair marker naming its
        two sources; returns the rows written."""
        table = matches_table(self.model, self.checkpoint, p, lang, stats)
        if p == self.base:  # the language's own marker gains its matches file
            record = self.sources[lang]
            keep = [WrittenFile.from_record(f) for f in record["files"]]
            info = {k: v for k, v in record.items() if k not in ("fingerprint", "files")}
            fp = record["fingerprint"]
        else:
            keep, fp = [], self.fingerprint_of(p, lang)
            info = {
                "checkpoint_fingerprint": self.fingerprint,
                "n_sentences": len(table["sentence"]) // max(1, len(stats)),
                "sources": [self.lake.done_marker(self.model, self.checkpoint, self.base, x) for x in (p, lang)],
            }
        commit_unit(self.lake, self.model, self.checkpoint, p, lang, [("matches", table, None)], fp, info, keep)
        return len(table["sentence"])


def _match(unit: dict[str, dict[str, torch.Tensor]], p: str, lang: str) -> dict:
    stats = {}
    for method, P in unit[p].items():
        if method not in unit[lang]:
            raise NeuronxaError(f"{lang!r} has no stored {method!r} states (pivot {p!r} has)")
        if P.shape[1] != unit[lang][method].shape[1]:
            raise NeuronxaError(f"parallel sentences needed: {p!r} and {lang!r} differ in length")
        stats[method] = match_stats(torch.bmm(P, unit[lang][method].transpose(1, 2))).numpy()
    return stats
