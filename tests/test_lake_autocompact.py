"""`run` compacts each checkpoint it completed (unless --no-compact): the views answer the same as without, a
failure to compact is a warning and never a failed run, and a checkpoint with failed units is left as it is."""

import logging

import pytest
import yaml
from tiny_models import TEXTS, save_tiny

from neuronxa_ray.cli import main
from neuronxa_ray.query import connect

QUERIES = (
    "SELECT model, checkpoint, method, pivot_lang, lang, layer, score, n_sentences FROM alignment ORDER BY ALL",
    "SELECT * FROM alignment_summary ORDER BY ALL",
    "SELECT lang, layer, neuron, n_active, abs_sum FROM neuron_counts ORDER BY ALL",
    "SELECT checkpoint, method, lang, score_mean, ci_low, ci_high FROM training_curve ORDER BY ALL",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("autocompact")
    save_tiny("llama", root / "model", seed=3)
    (root / "data").mkdir()
    for lang, texts in TEXTS.items():
        (root / "data" / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return root


def _job(root, lake) -> str:
    raw = {
        "model": str(root / "model"),
        "name": "tiny",
        "data": {"path": str(root / "data")},
        "checkpoints": [{"name": "a", "path": str(root / "model")}, {"name": "b", "path": str(root / "model")}],
        "n_sentences": 6,
        "batch_size": 4,
        "device": "cpu",
        "lake": str(lake),
    }
    path = lake.parent / f"{lake.name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _answers(lake):
    con = connect(lake)
    return [con.execute(q).fetchall() for q in QUERIES]


def _compacted(lake) -> list[str]:
    return sorted(p.parent.name for p in (lake / "matches").rglob("compacted-*.parquet"))


def test_run_compacts_what_it_completed_and_views_answer_the_same(tiny, tmp_path, ray_session, monkeypatch, caplog):
    plain, auto, broken = tmp_path / "plain", tmp_path / "auto", tmp_path / "broken"
    assert main(["run", _job(tiny, plain), "--no-progress", "--no-scores", "--no-compact"]) == 0
    assert _compacted(plain) == []
    assert main(["run", _job(tiny, auto), "--no-progress", "--no-scores"]) == 0
    assert _compacted(auto) == ["checkpoint=a", "checkpoint=b"]
    assert _answers(auto) == _answers(plain)
    from neuronxa_ray.lake import Lake

    assert Lake(auto).check() == []  # markers verify against the compacted files, nothing orphaned
    from neuronxa_ray.query import connect

    live = connect(auto).execute("SELECT count(*) FROM _matches_live").fetchone()[0]
    assert live == 0 and len(Lake(auto).view_files().files["alignment_interval"]) == 2  # the views read stored rows
    assert main(["run", _job(tiny, auto), "--no-progress", "--no-scores"]) == 0  # nothing to do: untouched
    assert _compacted(auto) == ["checkpoint=a", "checkpoint=b"] and _answers(auto) == _answers(plain)

    import neuronxa_ray.lake.compaction as compaction

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(compaction, "_merge", crash)  # compaction fails half-way: a warning, the run succeeds
    with caplog.at_level(logging.WARNING):
        assert main(["run", _job(tiny, broken), "--no-progress", "--no-scores"]) == 0
    assert "not compacted after the run" in caplog.text and "disk full" in caplog.text
    assert _compacted(broken) == [] and _answers(broken) == _answers(plain)
    monkeypatch.undo()
    assert Lake(broken).check() == []
