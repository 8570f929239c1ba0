"""Parallel sentences in: one file per language (FLORES-200 / MEXA layout) or TSV/JSONL rows of (id, lang, text).

Every reader returns a ParallelCorpus: the same n sentence ids in every language, in one order. Bad input raises
ValueError naming the file and line.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from neuronxa_ray.errors import NeuronxaError

log = logging.getLogger(__name__)

BUNDLED_UDHR = Path(__file__).resolve().parent.parent / "data" / "udhr"  # the package data neuronxa_ray.data.udhr


@dataclass
class ParallelCorpus:
    """sentences[lang][i] is unit ids[i] in language lang."""

    ids: list[str]
    sentences: dict[str, list[str]]
    source: str

    @property
    def languages(self) -> list[str]:
        return sorted(self.sentences)

    def select(self, pivot: str, languages: list[str] | None, n_sentences: int | None) -> ParallelCorpus:
        """Keep the pivot plus the requested languages (default all) and the first n_sentences units."""
        available = self.languages
        wanted = list(languages) if languages else list(available)
        for lang in [pivot, *wanted]:
            if lang not in self.sentences:
                hint = difflib.get_close_matches(lang, available, n=3)
                extra = f"; did you mean {hint}?" if hint else ""
                what = "pivot" if lang == pivot else "language"
                raise NeuronxaError(f"{self.source}: {what} {lang!r} not found among {available}{extra}")
        keep = [pivot] + [lang for lang in dict.fromkeys(wanted) if lang != pivot]
        n = len(self.ids) if n_sentences is None else n_sentences
        if n < 1:
            raise NeuronxaError(f"n_sentences must be >= 1, got {n_sentences!r}")
        if n > len(self.ids):
            log.warning(
                "%s: %d sentences asked for, %d available; using %d",
                self.source,
                n,
                len(self.ids),
                len(self.ids),
            )
            n = len(self.ids)
        if len(self.ids) < 2:
            raise NeuronxaError(
                f"{self.source}: {len(self.ids)} sentence(s) per language; scores compare sentences with each "
                "other (need >= 2)"
            )
        return ParallelCorpus(self.ids[:n], {lang: self.sentences[lang][:n] for lang in keep}, self.source)


BOM = "\ufeff"


def _decode(path: Path) -> str:
    """UTF-8 text of a file, without a leading byte-order mark (it would become part of sentence 0)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise NeuronxaError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    if text.startswith(BOM):
        log.warning("%s: removed a UTF-8 byte-order mark at the start of the file", path)
        text = text[1:]
    return text


def _read_lines(path: Path) -> list[str]:
    text = _decode(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()  # as MEXA does
        if not stripped:
            raise NeuronxaError(f"{path}:{number}: empty line (every line must hold the parallel sentence)")
        out.append(stripped)
    return out


def read_directory(path: str | Path, ext: str = ".txt") -> ParallelCorpus:
    """One file per language, `<lang><ext>`; line i is the same sentence in every file."""
    root = Path(path)
    if not root.exists():
        raise NeuronxaError(f"data path {str(root)!r} does not exist")
    if not root.is_dir():
        raise NeuronxaError(f"data path {str(root)!r} is not a directory (use format: tsv or jsonl for a file)")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(ext))
    if not files:
        raise NeuronxaError(f"{root}: no files ending in {ext!r}")
    nameless = [p.name for p in files if not p.name[: -len(ext)].strip()]
    if nameless:
        raise NeuronxaError(f"{root}: file {nameless[0]!r} gives an empty language code (name files <lang>{ext})")
    sentences = {p.name[: -len(ext)]: _read_lines(p) for p in files}
    lengths = {lang: len(lines) for lang, lines in sentences.items()}
    if len(set(lengths.values())) > 1:
        counts = list(lengths.values())
        common = max(set(counts), key=counts.count)
        shown = {f"{lang}{ext}": n for lang, n in lengths.items() if n != common or counts.count(common) == 1}
        raise NeuronxaError(
            f"{root}: files have different line counts (line i must be parallel): {shown}"
            + (f", the other {len(lengths) - len(shown)} have {common}" if len(shown) < len(lengths) else "")
        )
    n = next(iter(lengths.values()))
    if n == 0:
        raise NeuronxaError(f"{root}: every {ext} file is empty (line i of each file holds parallel sentence i)")
    return ParallelCorpus([str(i) for i in range(n)], sentences, str(root))


def read_rows(path: str | Path, fmt: str | None = None) -> ParallelCorpus:
    """TSV (header id, lang, text) or JSONL ({"id", "lang", "text"}) rows; unit order from first appearance."""
    file = Path(path)
    if not file.exists():
        raise NeuronxaError(f"data path {str(file)!r} does not exist")
    fmt = fmt or file.suffix.lstrip(".")
    if fmt not in ("tsv", "jsonl"):
        raise NeuronxaError(f"{file}: format {fmt!r} is not one of ['tsv', 'jsonl']")
    raw = _decode(file)
    rows: list[tuple[int, str, str, str]] = []  # (line, id, lang, text)
    if fmt == "tsv":
        reader = csv.reader(raw.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["id", "lang", "text"]:
            raise NeuronxaError(f"{file}:1: header must be 'id<TAB>lang<TAB>text', got {header!r}")
        for number, rec in enumerate(reader, start=2):
            if len(rec) != 3:
                raise NeuronxaError(f"{file}:{number}: expected 3 tab-separated fields, got {len(rec)}")
            rows.append((number, rec[0].strip(), rec[1].strip(), rec[2].strip()))
    else:
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rows.append((number, str(rec["id"]).strip(), str(rec["lang"]).strip(), str(rec["text"]).strip()))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise NeuronxaError(f"{file}:{number}: not a JSON object with id, lang, text ({e})") from e
    by_lang: dict[str, dict[str, str]] = {}
    ids: dict[str, None] = {}
    for number, uid, lang, text in rows:
        if not lang:
            raise NeuronxaError(f"{file}:{number}: empty language code for id {uid!r}")
        if not text:
            raise NeuronxaError(f"{file}:{number}: empty text for id {uid!r}, lang {lang!r}")
        if uid in by_lang.setdefault(lang, {}):
            raise NeuronxaError(f"{file}:{number}: duplicate (id {uid!r}, lang {lang!r})")
        by_lang[lang][uid] = text
        ids.setdefault(uid, None)
    if not by_lang:
        raise NeuronxaError(f"{file}: no rows")
    for lang, texts in by_lang.items():
        missing = [uid for uid in ids if uid not in texts]
        if missing:
            raise NeuronxaError(f"{file}: language {lang!r} lacks ids {missing[:5]} (every id needs every language)")
    order = list(ids)
    return ParallelCorpus(order, {lang: [t[uid] for uid in order] for lang, t in by_lang.items()}, str(file))


def read_corpus(path: str | Path, ext: str = ".txt", fmt: str | None = None) -> ParallelCorpus:
    """Dispatch on the path: a directory of per-language files, or a TSV/JSONL file of rows."""
    p = Path(path)
    if fmt in ("tsv", "jsonl") or (p.is_file() and p.suffix in (".tsv", ".jsonl")):
        return read_rows(p, fmt)
    return read_directory(p, ext)
