"""The whole worker on a GPU against the bare forward pass, in two real shapes with random weights (timing does not
depend on the weights' values, so nothing is downloaded): a 1.1B Llama (TinyLlama's shape) and an 8B Llama
(Llama-3-8B's shape), bf16, on the bundled UDHR parallel text (32 languages), tokenized by a BPE trained on that
text at start-up (32k entries, no download).

Figures, each printed beside the "before" measured on an H100 on 2026-11-25 (the worker as it stood then):
  hooked / bare       the hooked forward (FFN sums, hidden pooling) against the bare base-model forward, same batches
  worker / bare       LanguageWorker end to end (extraction, matches, counters, copies, lake writes), store_states
                      off (what store_states: auto picks at 8B x FLORES-200) and on (float16)
  MFU                 model FLOP utilisation of the hooked pass (2 x non-embedding parameters per token)
  write GB/s          one language's stored states written to Parquet, raw float16 bytes per second, 1 and 2 writers
  FLORES-200          an 8B checkpoint x 200 languages x 1,012 sentences: worker minutes and lake GB, extrapolated
                      from the measured slice (said so in the output)

    python -m benchmarks.bench_gpu          # on a CUDA machine (about 5 minutes on an H100); $OUT/gpu.json or .bench/
    python -m benchmarks.bench_gpu --tiny   # the same code on CPU with a small model (under a minute)

Imports nothing that a GPU machine without Ray, DuckDB or polars lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from benchmarks.bench_hooks import bare_forward
from benchmarks.common import udhr
from neuronxa_ray.compute.extraction import StateExtractor
from neuronxa_ray.corpus.readers import BUNDLED_UDHR, read_directory
from neuronxa_ray.lake import Lake, states_table
from neuronxa_ray.model.load import attach
from neuronxa_ray.model.spec import ModelSpec
from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks
BEFORE = {  # H100, 2026-11-25, the worker before the GPU data path (batches of 16 / 64 sentences)
    "hooked/bare 1b": 0.703,
    "hooked/bare 8b": 0.814,
    "worker/bare 1b": 0.053,
    "worker/bare 8b states off": 4.9 / 20,
    "worker/bare 8b states on": 1.2 / 20,
    "write GB/s": 0.035,
    "FLORES minutes": 7 / 0.05,
    "FLORES lake GB": 1100.0,
}
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, kv=4),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, kv=8),
    "tiny": dict(hidden_size=64, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4, kv=2),
}


def log(*args) -> None:
    print(*args, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tokenizer_for(texts: list[str], vocab: int, directory: Path):
    """A byte-level BPE trained on the parallel text itself (real token counts per language, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)
    return fast


def build(shape: str, vocab: int, device: torch.device, dtype: torch.dtype, directory: Path | None = None):
    s = SHAPES[shape]
    config = transformers.LlamaConfig(
        hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"],
        num_key_value_heads=s["kv"],
        vocab_size=vocab,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    if directory is not None:
        model.save_pretrained(directory)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    return model, config, n_params


def timed(fn, reps: int) -> float:
    """Median seconds of fn after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hooked_vs_bare(lm, ids, budgets, n_params, peak, reps) -> list[dict]:
    rows = []
    for budget in budgets:
        ex = StateExtractor(lm, batch_tokens=budget)

        def hooked(ex=ex):
            ex.extract_ids(ids)
            sync(lm.device)

        try:
            t_bare = timed(bare_forward(lm, ids, 16, budget), reps)
            t_hooked = timed(hooked, reps)
        except torch.OutOfMemoryError:
            log(f"  {budget:>6} tokens a batch: out of memory")
            torch.cuda.empty_cache()
            break
        n = sum(map(len, ids))
        mfu = n / t_hooked * 2 * n_params / peak if peak else float("nan")
        rows.append({"batch_tokens": budget, "bare_tps": n / t_bare, "hooked_tps": n / t_hooked, "mfu": mfu})
        log(
            f"  {budget:>6} tokens a batch: bare {n / t_bare:9.0f} tok/s, hooked {n / t_hooked:9.0f} tok/s, "
            f"hooked/bare {t_bare / t_hooked:.3f}, MFU {mfu:.3f}"
        )
    return rows


def whole_worker(model_dir, lm, data, tok, budget, store_states, lake_dir) -> dict:
    """Pivot + languages through LanguageWorker as one actor runs them (driver-side tokens), against the bare forward
    over the same batches."""
    spec = ModelSpec(model=str(model_dir), device=lm.device.type, dtype=str(lm.dtype).removeprefix("torch."))
    settings = WorkerSettings(lake=str(lake_dir), batch_tokens=budget, store_states=store_states)
    ids = {lang: tok(texts, add_special_tokens=True)["input_ids"] for lang, texts in data.items()}
    prefetched = attach(lm.model, None, spec, lm.device, lm.dtype)
    worker = LanguageWorker(spec, settings, with_tokenizer=False, prefetched=prefetched)
    langs = list(data)
    n_tokens = sum(len(x) for v in ids.values() for x in v)

    def run():
        shutil.rmtree(lake_dir, ignore_errors=True)
        host = 0
        for lang in langs:
            sentence_ids = [str(i) for i in range(len(data[lang]))]
            task = LanguageTask(
                "m",
                "main",
                langs[0],
                lang,
                sentence_ids,
                data[lang],
                "f",
                token_ids=ids[lang],
                checkpoint_fingerprint="c",
                run_id="r",
            )
            result, _ = worker.process(task, None, share_pivot=False)
            host += result.host_bytes
        worker.flush()
        sync(lm.device)
        return host

    host = run()  # warm-up, and the bytes that left the device
    t0 = time.perf_counter()
    run()
    t_worker = time.perf_counter() - t0
    bares = [bare_forward(lm, ids[lang], 16, worker.extractor.batch_tokens) for lang in langs]
    t_bare = timed(lambda: [b() for b in bares], 1)
    lake_bytes = sum(p.stat().st_size for p in Path(lake_dir).rglob("*") if p.is_file())
    return {
        "store_states": store_states,
        "languages": len(langs),
        "sentences": sum(len(v) for v in data.values()),
        "tokens": n_tokens,
        "worker_s": t_worker,
        "bare_s": t_bare,
        "ratio": t_bare / t_worker,
        "host_bytes": host,
        "lake_bytes": lake_bytes,
    }


def write_speed(lm, data, tok, lake_dir, writers: int) -> float:
    """Raw float16 state bytes per second of Parquet, one language's states written by `writers` threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    lang = next(iter(data))
    ids = tok(data[lang], add_special_tokens=True)["input_ids"]
    states = StateExtractor(lm, batch_tokens=4096).extract_ids(ids)
    host = {m: states.state(m).float().cpu().numpy() for m in ("nas", "nav", "hidden", "hidden_last")}
    raw = sum(a.size * 2 for a in host.values())
    lake = Lake(str(lake_dir))

    def one(k):
        table = states_table(
            "m", "main", f"l{k}", [str(i) for i in range(len(ids))], [len(x) for x in ids], host, "float16"
        )
        lake.write(
            "sentence_states", table, lake.language_file("sentence_states", "m", "main", f"l{k}"), state_dtype="float16"
        )

    one(-1)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(one, range(writers)))
    return raw * writers / (time.perf_counter() - t0) / 1e9


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, a small model: the same code in about a minute")
    ap.add_argument("--shapes", nargs="+", default=None, help="1b 8b (default), tiny with --tiny")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = args.shapes or (["tiny"] if args.tiny else ["1b", "8b"])
    out_dir = Path(os.environ.get("OUT") or Path(__file__).resolve().parent.parent / ".bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    env = {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    log(f"bench_gpu on {name}: {env}")
    corpus = read_directory(BUNDLED_UDHR)
    langs = corpus.languages if not args.tiny else corpus.languages[:3]
    data = udhr(langs, 50 if not args.tiny else 8)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    vocab = 32000 if not args.tiny else 2000
    tok = tokenizer_for(
        [t for v in udhr(corpus.languages, 50 if not args.tiny else 8).values() for t in v], vocab, work / "tok"
    )
    results: dict = {"env": env, "before": BEFORE, "shapes": {}}
    all_ids = [x for v in data.values() for x in tok(v, add_special_tokens=True)["input_ids"]]
    log(f"{len(data)} languages x {len(next(iter(data.values())))} UDHR paragraphs: {sum(map(len, all_ids))} tokens")
    for shape in shapes:
        t_shape = time.perf_counter()
        model_dir = work / shape
        model, _, n_params = build(shape, vocab, device, dtype)
        shutil.copytree(work / "tok", model_dir)  # a model directory: config + tokenizer (weights stay in memory)
        model.config.save_pretrained(model_dir)
        lm = attach(model, None, ModelSpec(model=str(model_dir)), device, dtype)
        log(f"\n{shape}: {n_params / 1e9:.2f}B non-embedding parameters, {dtype}")
        budgets = [1024] if args.tiny else ([4096, 16384, 65536] if shape == "1b" else [8192, 16384, 32768])
        rows = hooked_vs_bare(lm, all_ids, budgets, n_params, peak, reps=1 if args.tiny else 3)
        best = max(rows, key=lambda r: r["hooked_tps"])
        budget = best["batch_tokens"]
        sub = data if shape != "8b" else dict(list(data.items())[:12])
        worker = [whole_worker(model_dir, lm, sub, tok, budget, s, work / "lake") for s in (False, True)]
        for w in worker:
            log(
                f"  worker, store_states {w['store_states']!s:5}: {w['tokens'] / w['worker_s']:9.0f} tok/s against "
                f"bare {w['tokens'] / w['bare_s']:9.0f}: worker/bare {w['ratio']:.3f}; {w['host_bytes'] / 1e6:.1f} MB "
                f"left the device, lake {w['lake_bytes'] / 1e6:.1f} MB"
            )
        gbps = {k: write_speed(lm, data, tok, work / "writes", k) for k in (1, 2)}
        log(f"  writes: {gbps[1]:.3f} GB/s (1 writer), {gbps[2]:.3f} GB/s (2 writers) of raw float16 states")
        off = worker[0]
        per_sentence_s = off["worker_s"] / off["sentences"]
        lake_per_lang = off["lake_bytes"] / off["languages"] / (off["sentences"] / off["languages"]) * 1012
        flores = {"minutes": per_sentence_s * 200 * 1012 / 60, "lake_gb": lake_per_lang * 200 / 1e9}
        log(
            f"  FLORES-200 extrapolated from {off['languages']} languages x {off['sentences'] // off['languages']} "
            f"sentences (store_states off): {flores['minutes']:.1f} worker minutes, {flores['lake_gb']:.2f} GB of lake"
        )
        results["shapes"][shape] = {
            "hooked_vs_bare": rows,
            "worker": worker,
            "write_gbps": gbps,
            "flores": flores,
            "seconds": time.perf_counter() - t_shape,
        }
        key = "1b" if shape != "8b" else "8b"
        log(
            f"  before -> after: hooked/bare {BEFORE[f'hooked/bare {key}']:.3f} -> "
            f"{best['hooked_tps'] / best['bare_tps']:.3f}; worker/bare "
            f"{BEFORE.get(f'worker/bare {key}', BEFORE.get('worker/bare 8b states off')):.3f} -> {off['ratio']:.3f}"
        )
        del model, lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (out_dir / ("gpu.json" if device.type == "cuda" else "gpu_tiny.json")).write_text(
        json.dumps(results, indent=1, default=str)
    )
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
