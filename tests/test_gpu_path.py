"""The GPU data path, checked where CI can check it (no GPU): the fused reduction against float64, the Triton kernels
through Triton's interpreter, no full-size float32 copy of a half-precision activation, only what is kept leaving
the device, batches filled by tokens, the pivot computed where it is needed, and the default storage policy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import reference_states
from tiny_models import TEXTS, make_model, save_tiny

from neuronxa_ray.compute.extraction import StateExtractor, plan_batches
from neuronxa_ray.compute.reduction import ffn_sums
from neuronxa_ray.methods import METHODS


def _activation(dtype, batch=3, seq=9, d_ff=40, seed=0):
    """A random activation with padded tails (NaN there, as left-over garbage may be), and its weights/mask."""
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(batch, seq, d_ff, generator=g).to(dtype)
    lengths = [seq, seq - 3, 2][:batch]
    mask = torch.zeros(batch, seq)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        act[b, n:] = float("nan")
    t = mask.cumsum(-1) * mask
    w = t / (mask.sum(-1, keepdim=True) * (mask.sum(-1, keepdim=True) + 1) / 2)
    return act, torch.stack([w, mask], 1), mask


def _float64_sums(act, weights, mask):
    """The definition, in float64, on exactly the (rounded) values the reduction sees."""
    a = act.double()
    own = mask.bool().unsqueeze(-1)
    pos = torch.where(own, (a > 0).double(), torch.zeros_like(a))
    mag = torch.where(own, a.abs(), torch.zeros_like(a))
    w = weights.double()
    return torch.bmm(w, pos), torch.bmm(w, mag)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reduction_equals_the_float64_definition(dtype):
    act, weights, mask = _activation(dtype)
    pos, mag = ffn_sums(act, weights, mask.bool().unsqueeze(-1))
    ref_pos, ref_mag = _float64_sums(act, weights, mask)
    np.testing.assert_allclose(pos.double().numpy(), ref_pos.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mag.double().numpy(), ref_mag.numpy(), rtol=1e-6, atol=1e-7)


def test_float32_reduction_is_the_unchanged_torch_path():
    """float32 activations reduce exactly as before the fused path existed (sign, clamp, abs, bmm): bit for bit."""
    act, weights, mask = _activation(torch.float32)
    valid = mask.bool().unsqueeze(-1)
    positive = torch.sign(act).clamp_(min=0).masked_fill_(~valid, 0.0)
    magnitude = act.abs().masked_fill_(~valid, 0.0)
    pos, mag = ffn_sums(act, weights, valid)
    assert torch.equal(pos, torch.bmm(weights, positive)) and torch.equal(mag, torch.bmm(weights, magnitude))


def test_half_activation_is_never_copied_whole_to_float32():
    """The hook reduces a bf16 activation in float32 slices: no allocation as large as a float32 copy of it."""
    from torch.profiler import ProfilerActivity, profile

    act, weights, _ = _activation(torch.bfloat16, batch=4, seq=64, d_ff=2048)
    full_float32 = act.numel() * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        ffn_sums(act, weights, None)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest <= full_float32 // 4, (largest, full_float32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        act.float()  # what the hook did before: the profiler sees that copy
    assert max(e.cpu_memory_usage for e in prof.events()) >= full_float32


_TRITON_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from test_gpu_path import _activation, _float64_sums
from neuronxa_ray.compute.reduction import ffn_sums, pooled_sum, use_triton
out = {}
for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
    act, weights, mask = _activation(dtype, batch=3, seq=37, d_ff=300)
    assert use_triton(act)
    pos, mag = ffn_sums(act, weights, None)
    ref_pos, ref_mag = _float64_sums(act, weights, mask)
    h = torch.nan_to_num(act[..., :70])
    pooled = pooled_sum(h, weights[:, 0], mask, left_padded=False)
    ref_pooled = torch.bmm(weights[:, :1].double(), h.double() * mask.unsqueeze(-1).double()).squeeze(1)
    out[name] = [float((pos.double() - ref_pos).abs().max()), float((mag.double() - ref_mag).abs().max()),
                 float((pooled.double() - ref_pooled).abs().max())]
print(json.dumps(out))
"""


def test_triton_kernels_in_the_interpreter_equal_the_float64_definition():
    """The CUDA kernels themselves, run by Triton's interpreter on CPU tensors (a subprocess: the interpreter is
    chosen when the kernels are compiled)."""
    pytest.importorskip("triton", reason="Triton ships with CUDA builds of torch; the dev extra installs it here")
    env = {**os.environ, "TRITON_INTERPRET": "1", "NEURONXA_RAY_REDUCTION": "triton"}
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT, tests], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    for dtype, (pos, mag, pooled) in errors.items():
        assert pos < 1e-5 and mag < 1e-4 and pooled < 1e-4, (dtype, pos, mag, pooled)


def test_batches_by_token_budget():
    lengths = [5, 40, 7, 7, 12, 3, 40, 100, 9]
    batches = plan_batches(lengths, batch_size=16, batch_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64  # a 100-token sentence runs alone
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert [len(b) for b in batches] == [1, 1, 1, 5, 1]  # 100 | 40 | 40 | 12 9 7 7 5 | 3: every batch full
    assert plan_batches(lengths, batch_size=4) == [[7, 1, 6, 4], [8, 2, 3, 0], [5]]


def test_token_budget_batches_give_the_reference_states():
    lm = make_model("llama", dtype=torch.float64)
    texts = TEXTS["eng"] + TEXTS["fra"] + TEXTS["deu"]
    ref = reference_states(lm.model, lm.tokenizer, lm.hook_modules, texts)[0]
    got = StateExtractor(lm, batch_tokens=40).extract(texts)
    for method in METHODS:
        scale = np.abs(ref[method]).max()
        np.testing.assert_allclose(got.state(method).numpy(), ref[method], rtol=2e-6, atol=1e-6 * scale)


def _counting_copies(monkeypatch) -> list[int]:
    """Bytes of every tensor turned into host memory (numpy, .cpu()), however the code gets there."""
    seen: list[int] = []
    numpy, cpu = torch.Tensor.numpy, torch.Tensor.cpu

    def counted_numpy(self, *a, **k):
        seen.append(self.numel() * self.element_size())
        return numpy(self, *a, **k)

    def counted_cpu(self, *a, **k):
        seen.append(self.numel() * self.element_size())
        return cpu(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "numpy", counted_numpy)
    monkeypatch.setattr(torch.Tensor, "cpu", counted_cpu)
    return seen


@pytest.mark.parametrize("store_states", [False, True])
def test_only_what_is_kept_leaves_the_device(tmp_path, monkeypatch, store_states):
    """Per language, without stored states: matches (n x layers) and counters (layers x d_ff) only, never the
    n x layers x d_ff states; with them, the states too."""
    import transformers
    from tiny_models import make_tokenizer

    from neuronxa_ray.model.spec import ModelSpec
    from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings

    torch.manual_seed(0)  # wide FFNs, as real models have (d_ff >> sentences): the two sizes differ clearly
    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=4
    )
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    settings = WorkerSettings(lake=str(tmp_path / "lake"), store_states=store_states)
    worker = LanguageWorker(ModelSpec(model=str(tmp_path / "model")), settings)
    n = 12
    ids = [str(i) for i in range(n)]

    def task(lang):
        texts = [f"{t} ({i})" for i in range(2) for t in TEXTS[lang]]
        return LanguageTask("tiny", "main", "eng", lang, ids, texts, f"fp-{lang}", checkpoint_fingerprint="c")

    worker.process(task("eng"), share_pivot=False)
    worker.flush()
    seen = _counting_copies(monkeypatch)
    result, _ = worker.process(task("fra"))
    worker.flush()
    layers, d_ff, d_model = result.n_layers, result.d_ff, result.d_model
    state_bytes = 4 * n * (2 * layers * d_ff + 2 * (layers + 1) * d_model)
    small = 8 * (len(METHODS) * 7 * (layers + 1) * n + 2 * layers * d_ff + len(METHODS))  # matches, counters
    assert result.host_bytes == sum(seen)  # the worker's own account is what left the device
    if store_states:
        assert sum(seen) >= state_bytes
    else:
        assert 0 < sum(seen) <= small < state_bytes / 4, (sum(seen), small, state_bytes)


def test_a_pivot_no_one_hands_over_is_computed_where_needed(tmp_path):
    """An actor without the pivot's states (another actor computed them and did not share, or they were lost)
    computes them from the pivot's token ids: the same matches as with the states handed over."""
    from neuronxa_ray.model.spec import ModelSpec
    from neuronxa_ray.worker.worker import LanguageTask, LanguageWorker, WorkerSettings

    save_tiny("llama", tmp_path / "model", seed=5)
    spec = ModelSpec(model=str(tmp_path / "model"))
    ids = [str(i) for i in range(6)]

    def task(lang):
        return LanguageTask("tiny", "main", "eng", lang, ids, TEXTS[lang], f"fp-{lang}", checkpoint_fingerprint="c")

    home = LanguageWorker(spec, WorkerSettings(lake=str(tmp_path / "cache"), store_states=False))
    pivot_ids = home.extractor.tokenize(TEXTS["eng"])
    _, pivot = home.process(task("eng"), share_pivot=True)
    import pyarrow.parquet as pq

    found = {}
    for how, worker, handed in (
        ("cache", home, pivot),  # the pivot's own actor: from its device
        ("shared", LanguageWorker(spec, WorkerSettings(lake=str(tmp_path / "shared"), store_states=False)), pivot),
        ("computed", LanguageWorker(spec, WorkerSettings(lake=str(tmp_path / "computed"), store_states=False)), None),
    ):
        fra = task("fra")
        fra.pivot_token_ids = pivot_ids
        result, _ = worker.process(fra, handed)
        worker.flush()
        assert result.pivot_source == how
        (path,) = (tmp_path / how).rglob("matches/**/*.parquet")
        found[how] = pq.read_table(path)
    assert found["cache"].equals(found["shared"]) and found["cache"].equals(found["computed"])


def test_default_storage_policy_is_sized_for_an_8b_model_on_flores_200(tmp_path):
    """store_states: auto keeps a small job's states and drops an 8B x FLORES-200 checkpoint's (~0.5 TB as
    float16), keeping the job's every-pair requests possible."""
    from neuronxa_ray.config import job_from_dict
    from neuronxa_ray.planning.tables import resolve_store_states, state_bytes_per_sentence

    llama_8b = {"num_hidden_layers": 32, "intermediate_size": 14336, "hidden_size": 4096}
    per_sentence = state_bytes_per_sentence(llama_8b, "float16")
    assert per_sentence == (2 * 32 * 14336 + 2 * 33 * 4096) * 2  # 2.4 MB a sentence
    assert per_sentence * 200 * 1012 > 400e9

    class Resolved:
        def __init__(self, config):
            self._config = config

        def config(self):
            return self._config

    tiny = {"num_hidden_layers": 2, "intermediate_size": 64, "hidden_size": 32}
    job = job_from_dict({"model": "x", "data": {"path": str(tmp_path)}})
    assert job.store_states == "auto" and job.state_dtype == "float16"
    assert resolve_store_states(job, Resolved(tiny), 3, 100) is True
    assert resolve_store_states(job, Resolved(llama_8b), 200, 1012) is False
    assert resolve_store_states(job, Resolved(llama_8b), 2, 100) is True  # 0.5 GB: small enough to keep
    assert resolve_store_states(job, Resolved(None), 200, 1012) is True  # dims unknown: kept
    pairs = job_from_dict({"model": "x", "data": {"path": str(tmp_path)}, "pivots": "all"})
    assert resolve_store_states(pairs, Resolved(llama_8b), 200, 1012) is True
    off = job_from_dict({"model": "x", "data": {"path": str(tmp_path)}, "store_states": False})
    assert resolve_store_states(off, Resolved(tiny), 3, 100) is False


def test_bench_gpu_tiny_runs_without_ray_duckdb_or_polars(tmp_path):
    """The GPU benchmark's --tiny mode: the same code as on the GPU machine, which has no Ray, DuckDB or polars."""
    blocked = "import sys\nfor m in ('ray', 'duckdb', 'polars', 'langcodes'): sys.modules[m] = None\n"
    script = blocked + "from benchmarks import bench_gpu\nbench_gpu.main(['--tiny'])\n"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_tiny.json").read_text())
    tiny = results["shapes"]["tiny"]
    assert tiny["hooked_vs_bare"][0]["hooked_tps"] > 0 and tiny["flores"]["lake_gb"] > 0
    off, on = tiny["worker"]
    assert off["host_bytes"] < on["host_bytes"] and off["lake_bytes"] < on["lake_bytes"]
    assert "worker/bare" in done.stdout and "FLORES-200 extrapolated" in done.stdout
