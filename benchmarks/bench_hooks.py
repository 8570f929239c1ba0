"""Hook overhead: the hooked forward (all four states and the neuron counters) against the bare base-model
forward, on the same model, sentences, batches and threads. Goal: hooked throughput >= 0.90 of bare."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import GEMMA, interleaved, report, save, udhr
from neuronxa_ray.compute.extraction import StateExtractor, pad_batch, plan_batches
from neuronxa_ray.model.load import load_model
from neuronxa_ray.model.spec import ModelSpec


def bare_forward(lm, ids: list[list[int]], batch_size: int, batch_tokens: int | None = None):
    """The same batches as the extractor makes (longest first, right-padded), without hooks or hidden states."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer is not None else 0
    rows = plan_batches([len(x) for x in ids], batch_size, batch_tokens)
    batches = [pad_batch([ids[i] for i in batch], pad_id) for batch in rows]

    @torch.inference_mode()
    def run():
        for input_ids, mask in batches:
            input_ids, mask = input_ids.to(lm.device), mask.to(lm.device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            lm.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    return run


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=GEMMA)
    ap.add_argument("--languages", nargs="+", default=["eng", "rus"])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    lm = load_model(ModelSpec(model=args.model))
    texts = [t for ts in udhr(args.languages, args.n).values() for t in ts]
    extractor = StateExtractor(lm, batch_size=args.batch_size)
    ids = extractor.tokenize(texts)
    bare = bare_forward(lm, ids, args.batch_size)
    n_tokens = sum(map(len, ids))

    def hooked():
        StateExtractor(lm, batch_size=args.batch_size).extract(texts)  # hooks live for the call only
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    t = interleaved({"bare": bare, "hooked": hooked}, reps=args.reps)
    ratio = t["bare"] / t["hooked"]
    print(
        f"hook overhead on {lm.device} ({lm.model_type}, {len(texts)} sentences, {n_tokens} tokens, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads)"
    )
    print(f"  bare {n_tokens / t['bare']:.0f} tok/s, hooked {n_tokens / t['hooked']:.0f} tok/s")
    results = [report("hooked / bare throughput", ratio, 0.90)]
    save("hooks", {"times": t, "n_tokens": n_tokens, "device": str(lm.device), "results": results})
    return results


if __name__ == "__main__":
    main()
