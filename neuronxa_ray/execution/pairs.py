"""Every (pivot, language) pair of a checkpoint from its stored states, after the forward passes: one float64
matmul per method and pair, matched on the device, written with a marker that names the two source markers.
"""

from __future__ import annotations

import logging

import torch

from neuronxa_ray.compute.matching import match_stats, normalize_states
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake, WrittenFile, matches_table
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
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    base = base_pivot or languages[0]
    pivot_langs = resolve_pivots(pivots, languages)
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
                if p == base:  # the language's own marker gains its matches file
                    record = sources[lang]
                    keep = [WrittenFile.from_record(f) for f in record["files"]]
                    info = {k: v for k, v in record.items() if k not in ("fingerprint", "files")}
                    fp = record["fingerprint"]
                else:
                    keep, fp = [], pair_fingerprint(p, lang)
                    info = {
                        "checkpoint_fingerprint": fingerprint,
                        "n_sentences": len(table["sentence"]) // max(1, len(stats)),
                        "sources": [lake.done_marker(model, checkpoint, base, x) for x in (p, lang)],
                    }
                commit_unit(lake, model, checkpoint, p, lang, [("matches", table, None)], fp, info, keep)
                rows += len(table["sentence"])
            log.info("pivot %s: matches for %d languages", p, len(langs))
    return rows
