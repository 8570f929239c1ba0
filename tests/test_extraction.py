"""The batched, hooked fast path against the unbatched float64 reference, on every supported architecture."""

import numpy as np
import pytest
import torch
from reference import cosine_matrix, reference_states
from tiny_models import CONFIGS, TEXTS, make_model

from neuronxa_ray.compute.extraction import StateExtractor, position_weights
from neuronxa_ray.compute.matching import cosine_matrices
from neuronxa_ray.methods import METHODS

ARCHS = sorted(CONFIGS)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_matches_float64_reference(arch):
    """Reductions are exact in float64; the tolerance covers RoPE tables, which transformers computes in float32
    even for float64 models (vectorised and scalar sin/cos differ by an ulp between batch shapes)."""
    lm = make_model(arch, dtype=torch.float64)
    texts = TEXTS["eng"] + TEXTS["fra"]
    ref, ref_active, ref_abs, ref_tokens = reference_states(lm.model, lm.tokenizer, lm.hook_modules, texts)
    ex = StateExtractor(lm, batch_size=4)  # several batches, mixed lengths: padding in every batch
    got = ex.extract(texts)
    for method in METHODS:
        scale = np.abs(ref[method]).max()
        np.testing.assert_allclose(got.state(method).numpy(), ref[method], rtol=2e-6, atol=1e-6 * scale, err_msg=method)
    np.testing.assert_allclose(got.nas.numpy(), ref["nas"], rtol=0, atol=1e-12)  # no activation sits within 1e-6 of 0
    np.testing.assert_array_equal(got.n_active.numpy(), ref_active)
    np.testing.assert_allclose(got.abs_sum.numpy(), ref_abs, rtol=2e-6)
    assert got.n_tokens == ref_tokens
    # the states are not degenerate: neurons fire for some tokens and not others
    assert 0 < got.nas.mean() < 1


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_left_and_right_padding_give_the_same_states(arch):
    lm = make_model(arch, dtype=torch.float64)
    texts = TEXTS["deu"]
    right = StateExtractor(lm, batch_size=3, padding_side="right").extract(texts)
    lm2 = make_model(arch, dtype=torch.float64)
    left = StateExtractor(lm2, batch_size=3, padding_side="left").extract(texts)
    for method in METHODS:
        np.testing.assert_allclose(left.state(method).numpy(), right.state(method).numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(left.n_active.numpy(), right.n_active.numpy())


def test_float32_fast_path_is_within_count_noise_of_the_reference():
    """float32 sums differ in the last bits; NAS may flip a token whose activation is ~0, never more."""
    lm64 = make_model("llama", dtype=torch.float64)
    texts = TEXTS["eng"] + TEXTS["deu"]
    ref, *_ = reference_states(lm64.model, lm64.tokenizer, lm64.hook_modules, texts)
    got = StateExtractor(make_model("llama", dtype=torch.float32), batch_size=5).extract(texts)
    for method in ("nav", "hidden", "hidden_last"):
        np.testing.assert_allclose(got.state(method).numpy(), ref[method], rtol=1e-4, atol=1e-5)
    diff = np.abs(got.nas.numpy() - ref["nas"])
    assert (diff > 1e-6).mean() < 1e-3
    max_weight = max(2 / (len(ids) + 1) for ids in lm64.tokenizer(texts)["input_ids"])
    assert diff.max() <= max_weight + 1e-6


def test_down_proj_input_hook_site_is_act_times_up():
    lm = make_model("llama", dtype=torch.float64, hook_site="down_proj_input")
    texts = TEXTS["fra"]
    ref, *_ = reference_states(lm.model, lm.tokenizer, lm.hook_modules, texts, hook_site="down_proj_input")
    got = StateExtractor(lm, batch_size=4).extract(texts)
    np.testing.assert_allclose(got.nav.numpy(), ref["nav"], rtol=2e-6)
    act = StateExtractor(make_model("llama", dtype=torch.float64), batch_size=4).extract(texts)
    assert not np.allclose(got.nav.numpy(), act.nav.numpy())  # a different site really is hooked


def test_batch_size_does_not_change_states():
    lm = make_model("qwen2", dtype=torch.float64)
    texts = TEXTS["eng"]
    ex = StateExtractor(lm, batch_size=1)
    one = ex.extract(texts)
    ex.batch_size = 6
    six = ex.extract(texts)
    for method in METHODS:
        np.testing.assert_allclose(one.state(method).numpy(), six.state(method).numpy(), rtol=1e-9, atol=1e-12)


def test_position_weights_count_own_tokens_whatever_the_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    w = position_weights(mask)
    np.testing.assert_allclose(w[0].numpy(), [1 / 6, 2 / 6, 3 / 6, 0])
    np.testing.assert_allclose(w[1].numpy(), [0, 1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(w[2].numpy(), [1, 0, 0, 0])


def test_cosine_matrices_match_reference_and_zero_states_are_nan():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5, 3, 7))
    x = rng.normal(size=(5, 3, 7))
    x[2, 1] = 0.0  # a zero state
    got = cosine_matrices(torch.from_numpy(p), torch.from_numpy(x)).numpy()
    for layer in range(3):
        np.testing.assert_allclose(got[layer], cosine_matrix(p[:, layer], x[:, layer]), rtol=1e-12, equal_nan=True)
    assert np.isnan(got[1][:, 2]).all() and not np.isnan(got[0]).any()


def test_empty_input_is_rejected():
    ex = StateExtractor(make_model("llama"), batch_size=2)
    with pytest.raises(ValueError, match="no sentences"):
        ex.extract([])


def test_pivot_states_from_ray_are_used_without_a_copy_or_a_warning():
    """Pivot states arrive read-only (Ray's object store): the worker uses them in place, without torch's warning
    about non-writable arrays in every run's log (a fresh process: torch shows that warning once per process)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from neuronxa_ray.worker.worker import shared_tensor\n"
        "a = np.arange(12, dtype=np.float32).reshape(2, 3, 2)\n"
        "a.flags.writeable = False\n"
        "t = shared_tensor(a)\n"
        "assert t.data_ptr() == a.ctypes.data and t.dtype.is_floating_point and t.tolist() == a.tolist()\n"
        "b = shared_tensor(a.astype(np.float64))\n"
        "assert str(b.dtype) == 'torch.float32' and b.tolist() == a.tolist()\n"
    )
    warning = "The given NumPy array is not writable"
    done = subprocess.run(
        [sys.executable, "-W", f"error:{warning}", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and warning not in done.stderr, done.stderr[-2000:]
