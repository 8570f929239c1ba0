"""GPU: a randomly initialised Llama-style model of about 1B parameters (weights don't matter for speed, so
nothing is downloaded): tokens/s hooked vs bare per batch size, model FLOP utilisation, and the batch size that
maximises hooked throughput within memory. Goal: hooked >= 0.90 of bare.

    python -m benchmarks.bench_gpu                  # on a CUDA machine
    python -m benchmarks.bench_gpu --tiny           # a CPU smoke run of the same code with a small model
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import transformers

from benchmarks.bench_hooks import bare_forward
from benchmarks.common import report, save
from neuronxa_ray.extraction import StateExtractor
from neuronxa_ray.models import ModelSpec, attach

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


def model_1b(tiny: bool) -> transformers.LlamaConfig:
    if tiny:
        return transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
        )
    return transformers.LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=2048,
    )


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--batches", type=int, default=8, help="batches per measurement")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = model_1b(args.tiny)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation="sdpa").to(device=device, dtype=dtype)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    lm = attach(model, None, ModelSpec(model="random-llama-1b"), device, dtype)  # token ids are made below
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    print(f"random Llama-style model, {n_params / 1e9:.2f}B non-embedding parameters, {dtype}, on {name}")
    print(f"{'batch':>6} {'bare tok/s':>12} {'hooked tok/s':>13} {'ratio':>6} {'MFU hooked':>11}")
    rng = random.Random(0)
    rows = []
    for bs in args.batch_sizes:
        ids = [
            [rng.randrange(1, config.vocab_size) for _ in range(rng.randint(20, 120))] for _ in range(bs * args.batches)
        ]
        n_tokens = sum(map(len, ids))
        try:
            bare = bare_forward(lm, ids, bs)
            bare()
            ex = StateExtractor(lm, batch_size=bs)
            ex.extract_ids(ids)  # warm-up
            t = {"bare": [], "hooked": []}
            for _ in range(3):
                t0 = time.perf_counter()
                bare()
                t["bare"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ex.extract_ids(ids)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t["hooked"].append(time.perf_counter() - t0)
            ex.close()
        except torch.OutOfMemoryError:
            print(f"{bs:>6} out of memory")
            break
        bare_tps, hooked_tps = n_tokens / min(t["bare"]), n_tokens / min(t["hooked"])
        mfu = hooked_tps * 2 * n_params / peak if peak else float("nan")
        rows.append(
            {"batch": bs, "bare_tps": bare_tps, "hooked_tps": hooked_tps, "ratio": hooked_tps / bare_tps, "mfu": mfu}
        )
        print(f"{bs:>6} {bare_tps:12.0f} {hooked_tps:13.0f} {hooked_tps / bare_tps:6.3f} {mfu:11.3f}")
    best = max(rows, key=lambda r: r["hooked_tps"])
    print(f"best batch size {best['batch']}: {best['hooked_tps']:.0f} hooked tokens/s")
    results = [report(f"hooked / bare throughput at batch {best['batch']} ({device.type})", best["ratio"], 0.90)]
    save("gpu" if device.type == "cuda" else "gpu_smoke", {"device": name, "rows": rows, "results": results})
    return results


if __name__ == "__main__":
    main()
