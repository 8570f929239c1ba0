import pytest

from neuronxa_ray.config import job_from_dict, load_job
from neuronxa_ray.errors import NeuronxaError


def test_minimal_job_and_defaults():
    job = job_from_dict({"model": "org/m", "data": {"path": "d/"}})
    assert (job.pivot, job.n_sentences, job.lake, job.dtype, job.hook_site) == (
        "eng",
        100,
        "lake",
        "auto",
        "act",
    )
    assert [c.name for c in job.resolved_checkpoints()] == ["main"]


def test_overrides_win_and_checkpoints_resolve(tmp_path):
    (tmp_path / "step100").mkdir()
    job = job_from_dict(
        {
            "model": "org/m",
            "data": "d/",
            "n_sentences": 50,
            "checkpoints": ["rev-a", str(tmp_path / "step100"), {"revision": "step200", "step": 200}],
        },
        overrides={"n_sentences": 7, "lake": None},
    )
    assert job.n_sentences == 7 and job.lake == "lake"
    names = [(c.name, c.model, c.revision, c.step) for c in job.resolved_checkpoints()]
    assert names == [
        ("rev-a", "org/m", "rev-a", None),
        ("step100", str((tmp_path / "step100").resolve()), None, 100),  # step parsed from the name
        ("step200", "org/m", "step200", 200),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": "m", "data": "d", "pivott": "eng"}, r"unknown field 'pivott'; did you mean 'pivot'"),
        ({"model": "m"}, r"missing required field 'data'"),
        ({"model": "m", "data": "d", "n_sentences": 0}, r"'n_sentences' = 0"),
        ({"model": "m", "data": "d", "hook_site": "mlp"}, r"'hook_site' = 'mlp'.*act"),
        ({"model": "m", "data": "d", "state_dtype": "int8"}, r"'state_dtype' = 'int8'"),
        ({"model": "m", "data": {"path": "d", "formt": "tsv"}}, r"unknown field data\.'formt'"),
        ({"model": "m", "data": "d", "checkpoints": ["a", "a"]}, r"checkpoint names must be unique"),
        ({"model": "m", "data": "d", "languages": "fra"}, r"'languages' = 'fra'"),
    ],
)
def test_bad_fields_are_named_with_value(raw, message):
    with pytest.raises(NeuronxaError, match=message):
        job_from_dict(raw, source="job.yaml")


def test_load_job_errors_name_the_file(tmp_path):
    with pytest.raises(NeuronxaError, match="does not exist"):
        load_job(tmp_path / "missing.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("model: [unclosed\n")
    with pytest.raises(NeuronxaError, match=r"bad\.yaml: not valid YAML"):
        load_job(f)
    f.write_text("model: m\ndata: d\nbatch_size: -1\n")
    with pytest.raises(NeuronxaError, match=r"bad\.yaml: field 'batch_size' = -1"):
        load_job(f)
