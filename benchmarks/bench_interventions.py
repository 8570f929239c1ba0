"""Intervention cost: a unit with neurons switched off and perplexity measured (zeroing hooks + the LM head on the
final hidden states of the same pass) against a plain unit, on the same model, sentences, batches and threads.
Goal: the intervention unit costs a plain unit plus the LM head, nothing more: (intervention - plain) / the LM head
alone (the same chunked NLL on the same batches' final hidden states, kept from a plain pass) <= 1.15. Printed
beside it: the head's share of the matmul FLOPs per token (its weights over the body's, input embeddings left out),
large for Gemma 3 270M's 262k-entry vocabulary."""

from __future__ import annotations

import argparse

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

    t = interleaved({"plain": plain, "intervention": intervention, "head": head_alone}, reps=args.reps)
    share = head_share(lm, head)
    extra = (t["intervention"] - t["plain"]) / t["head"]
    print(
        f"intervention cost on {lm.device} ({lm.model_type}, {len(texts)} sentences, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads): plain {t['plain']:.2f} s, intervention {t['intervention']:.2f} s "
        f"({t['intervention'] / t['plain']:.3f}x), LM head alone {t['head']:.2f} s; head / body FLOPs {share:.2f}"
    )
    results = [report("(intervention - plain) / LM head alone", extra, 1.15, "x", False)]
    save("interventions", {"times": t, "head_share": share, "device": str(lm.device), "results": results})
    return results


if __name__ == "__main__":
    main()
