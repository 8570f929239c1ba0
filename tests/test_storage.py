"""Lake roots: parsing, absolute paths, unknown schemes, and errors that name the lake and the cause."""

import os

import pytest

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake
from neuronxa_ray.lake.storage import Storage


def test_local_roots_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Storage.from_root("lake").uri == str(tmp_path / "lake")
    assert Storage.from_root(f"file://{tmp_path}/x/").uri == str(tmp_path / "x")
    assert Storage.from_root(tmp_path / "y").is_local


def test_uris_keep_their_scheme_and_bucket():
    s = Storage.from_root("s3://bucket/some/prefix/")
    assert (s.uri, s.scheme, s.base, s.bucket) == ("s3://bucket/some/prefix", "s3", "bucket/some/prefix", "bucket")
    assert Storage.from_root("gcs://b/p").uri == "gs://b/p"
    assert Storage.from_root("s3://b/p").full_uri("runs/x.parquet") == "s3://b/p/runs/x.parquet"
    assert Storage.from_root("s3://b/p").relative("s3://b/p/runs/x.parquet") == "runs/x.parquet"


@pytest.mark.parametrize("root", ["ftp://host/lake", "hdfs2://x/y", "S4://b/p"])
def test_unknown_scheme_is_one_line_naming_lake_and_allowed(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NeuronxaError) as e:
        Lake(root)
    msg = str(e.value)
    assert "\n" not in msg and root in msg and "s3://" in msg and "gs://" in msg
    assert os.listdir(tmp_path) == []  # nothing created locally


def test_s3_without_bucket_is_refused():
    with pytest.raises(NeuronxaError, match="no bucket"):
        Lake("s3:///prefix")


def test_endpoint_and_region_from_the_environment(monkeypatch):
    from neuronxa_ray.lake.storage import make_s3

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")  # the S3-specific one wins
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    fs = make_s3()
    assert fs.region == "eu-west-3"
    assert "127.0.0.1:2" in repr(fs.__reduce__())
    lake = Lake("s3://b/p")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # a worker without the variables gets the driver's settings
    import pickle

    assert pickle.loads(pickle.dumps(lake)).storage.options["endpoint_override"] == "127.0.0.1:2"
