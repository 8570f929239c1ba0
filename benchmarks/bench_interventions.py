"""Intervention cost: a unit with neurons switched off and perplexity measured (zeroing hooks + the LM head on the
final hidden states of the same pass) against a plain unit, on the same model, sentences, batches and threads.
Goal: the intervention unit costs a plain unit plus the LM head, nothing more: (intervention - plain) / the LM head
alone (the same chunked NLL on the same batches' final hidden states, kept from a plain pass) <= 1.15, measured
twice: on the extractor's pass, and on whole worker units (LanguageWorker.process of a job's task, its matching
against the pivot and its lake write included, as the scheduler runs them). Printed
beside it: the head's share of the matmul FLOPs per token (its weights over the body's, input embeddings left out),
large for Gemma 3 270M's 262k-entry vocabulary."""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import GEMMA, interleaved, report, save, udhr
from neuronxa_ray.compute.extraction import StateExtractor
from neuronxa_ray.compute.interventions import NeuronSet, NLLRecorder, load_lm_head, sentence_nll, zeroed
from neuronxa_ray.model.load import load_model
from neuronxa_ray.model.spec import ModelSpec


def head_share(lm, head) -> float:
    """The LM head's matmul FLOPs over the body's (every weight but the input embeddings) per token."""
    embedding = lm.model.get_input_embeddings().weight
    body = sum(p.numel() for p in lm.model.parameters() if p is not embedding and p.dim() > 1)
    return head.weight.numel() / body


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=GEMMA)
    ap.add_argument("--languages", nargs="+", default=["eng", "rus"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    spec = ModelSpec(model=args.model)
    lm = load_model(spec)
    head = load_lm_head(lm, spec)
    texts = [t for ts in udhr(args.languages, args.n).values() for t in ts]
    d_ff = lm.model.config.intermediate_size
    per_layer = NeuronSet([torch.arange(max(1, d_ff // 100))] * len(lm.blocks))
    neurons = NeuronSet.random_like(per_layer, d_ff, seed=0)  # 1% of each layer

    def plain():
        StateExtractor(lm, batch_size=args.batch_size).extract(texts)

    def intervention():
        with zeroed(lm, neurons):
            StateExtractor(lm, batch_size=args.batch_size).extract(texts, on_batch=NLLRecorder(head, len(texts)))

    kept = []  # each batch's (ids, mask, final hidden states), for timing the head alone
    keep = lambda _, input_ids, mask, hidden_states: kept.append((input_ids, mask, hidden_states[-1]))  # noqa: E731
    StateExtractor(lm, batch_size=args.batch_size).extract(texts, on_batch=keep)

    def head_alone():
        for input_ids, mask, hidden in kept:
            sentence_nll(hidden, head, input_ids, mask)

    worker, tasks = _worker_units(spec, args, texts, neurons)

    def unit(task):
        return lambda: (worker.process(task), worker.flush())

    t = interleaved(
        {
            "plain": plain,
            "intervention": intervention,
            "head": head_alone,
            "unit_plain": unit(tasks["plain"]),
            "unit_intervention": unit(tasks["intervention"]),
        },
        reps=args.reps,
    )
    share = head_share(lm, head)
    extra = (t["intervention"] - t["plain"]) / t["head"]
    unit_extra = (t["unit_intervention"] - t["unit_plain"]) / t["head"]
    print(
        f"intervention cost on {lm.device} ({lm.model_type}, {len(texts)} sentences, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads): plain {t['plain']:.2f} s, intervention {t['intervention']:.2f} s "
        f"({t['intervention'] / t['plain']:.3f}x), LM head alone {t['head']:.2f} s; head / body FLOPs {share:.2f}"
    )
    print(
        f"whole worker units: plain {t['unit_plain']:.2f} s, intervention {t['unit_intervention']:.2f} s "
        f"({t['unit_intervention'] / t['unit_plain']:.3f}x)"
    )
    results = [
        report("(intervention - plain) / LM head alone", extra, 1.15, "x", False),
        report("worker units: (intervention - plain) / LM head alone", unit_extra, 1.15, "x", False),
    ]
    save("interventions", {"times": t, "head_share": share, "device": str(lm.device), "results": results})
    return results


def _worker_units(spec, args, texts, neurons):
    """A LanguageWorker writing to a temporary lake, its pivot computed, and two tasks of one language: plain, and
    with the neurons off and perplexity measured (what a job's intervention unit is)."""
    from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings

    lake = tempfile.mkdtemp(prefix="bench-interventions-")
    worker = LanguageWorker(spec, WorkerSettings(lake, batch_size=args.batch_size, store_states=False))
    ids = [str(i) for i in range(len(texts))]
    pivot, lang = texts[::-1], texts  # the unit runs the same sentences as the head alone
    worker.process(LanguageTask("bench", "main", "p", "p", ids, pivot, "fp", checkpoint_fingerprint="c"))
    worker.flush()
    layers = tuple(tuple(x.tolist()) for x in neurons.layers)
    plain = LanguageTask("bench", "main", "p", "x", ids, lang, "fp", checkpoint_fingerprint="c")
    off = LanguageTask(
        "bench",
        "main",
        "p",
        "x",
        ids,
        lang,
        "fp",
        checkpoint_fingerprint="c",
        perplexity=True,
        neurons=layers,
        intervention="random",
        switched_off="x",
    )
    return worker, {"plain": plain, "intervention": off}


if __name__ == "__main__":
    main()
