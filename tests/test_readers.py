import json

import pytest

from neuronxa_ray.corpus.readers import BUNDLED_UDHR, read_corpus, read_directory, read_rows
from neuronxa_ray.errors import NeuronxaError


def _write(d, files):
    for name, content in files.items():
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return d


def test_directory_layout_reads_parallel_lines(tmp_path):
    _write(tmp_path, {"eng.txt": "Hello\n  World \n", "fra.txt": "Bonjour\nMonde\n", "notes.md": "x"})
    c = read_directory(tmp_path)
    assert c.languages == ["eng", "fra"]
    assert c.sentences["eng"] == ["Hello", "World"]  # stripped, as MEXA does
    assert c.ids == ["0", "1"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"eng.txt": "a\nb\n", "fra.txt": "a\n"}, r"different line counts.*'eng\.txt': 2, 'fra\.txt': 1"),
        ({"eng.txt": "a\n\nb\n", "fra.txt": "a\nb\nc\n"}, r"eng\.txt:2: empty line"),
        ({"eng.txt": b"ok\n\xff\xfe bad\n", "fra.txt": "a\nb\n"}, r"eng\.txt:2: not valid UTF-8"),
    ],
)
def test_directory_errors_name_file_and_line(tmp_path, files, message):
    _write(tmp_path, files)
    with pytest.raises(NeuronxaError, match=message):
        read_directory(tmp_path)


def test_missing_path_pivot_and_language(tmp_path):
    with pytest.raises(NeuronxaError, match="does not exist"):
        read_corpus(tmp_path / "nope")
    _write(tmp_path, {"eng.txt": "a\nb\n", "fra.txt": "c\nd\n"})
    c = read_directory(tmp_path)
    with pytest.raises(NeuronxaError, match=r"pivot 'en' not found.*did you mean \['eng'\]"):
        c.select("en", None, None)
    with pytest.raises(NeuronxaError, match=r"language 'fre' not found.*did you mean \['fra'\]"):
        c.select("eng", ["fre"], None)
    sel = c.select("fra", ["eng"], 1)
    assert list(sel.sentences) == ["fra", "eng"] and sel.ids == ["0"]


def test_tsv_and_jsonl_rows(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\tlang\ttext\n1\teng\tHello\n1\tfra\tBonjour\n2\teng\tWorld\n2\tfra\tMonde\n")
    c = read_rows(tsv)
    assert c.ids == ["1", "2"] and c.sentences["fra"] == ["Bonjour", "Monde"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        "\n".join(
            json.dumps(r)
            for r in [{"id": 1, "lang": "eng", "text": "Hello"}, {"id": 1, "lang": "deu", "text": "Hallo"}]
        )
        + "\n"
    )
    assert read_corpus(jl).sentences == {"eng": ["Hello"], "deu": ["Hallo"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id\tlang\ttext\n1\teng\tHello\n1\tfra\tBonjour\n2\teng\tWorld\n", r"'fra' lacks ids \['2'\]"),
        ("id\tlang\ttext\n1\teng\t \n", r"p\.tsv:2: empty text"),
        ("id\tlang\ttext\n1\teng\ta\tb\n", r"p\.tsv:2: expected 3 tab-separated fields"),
        ("lang\ttext\n", r"p\.tsv:1: header"),
        ("id\tlang\ttext\n1\teng\ta\n1\teng\tb\n", r"p\.tsv:3: duplicate"),
    ],
)
def test_row_errors(tmp_path, content, message):
    f = tmp_path / "p.tsv"
    f.write_text(content)
    with pytest.raises(NeuronxaError, match=message):
        read_rows(f)


def test_bundled_udhr_is_parallel_and_large_enough():
    c = read_directory(BUNDLED_UDHR)
    assert len(c.languages) >= 20 and len(c.ids) >= 50
    assert c.sentences["eng"][0].startswith("All human beings are born free")
    assert c.sentences["fra"][0].startswith("Tous les êtres humains naissent libres")
