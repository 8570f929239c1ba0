"""Language codes: one canonical code per language, whatever spelling the data or a benchmark uses.

Parallel corpora name languages by ISO 639-3 (`fra`, `arb`, `cmn`, `swh`), FLORES by code and script (`fra_Latn`,
`zho_Hans`), lm-evaluation-harness tasks by ISO 639-1 (`xnli_fr`, `xnli_zh`), others by BCP 47 tags with regions
(`fr-FR`) or ISO 639-2/B (`fre`). `canonical_lang` maps all of them to one BCP 47 code, using `langcodes` (IANA
subtag registry, CLDR likely-subtags and macrolanguage data; `language-data` for names):

- the shortest language subtag (`fra`, `fre` -> `fr`);
- an individual language becomes its macrolanguage (`arb` -> `ar`, `cmn` -> `zh`, `swh` -> `sw`, `pes` -> `fa`),
  so a benchmark for `xnli_zh` meets scores stored under `cmn` or `zho_Hans`;
- the region is dropped (`fr-FR` -> `fr`), the script is kept only where it is not the language's usual one
  (`zho_Hans` -> `zh`, `zho_Hant` and `zh-TW` -> `zh-Hant`, `srp_Latn` -> `sr-Latn`).

A code langcodes cannot parse or does not know stays as written, lower-cased, so it still matches itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LanguageCode:
    """A code as the data wrote it, its canonical code, and a readable name."""

    code: str
    canonical: str
    name: str
    known: bool  # False: langcodes did not recognise the code; canonical is the code itself, lower-cased


def _langcodes():
    try:
        import langcodes
    except ImportError as e:  # a core dependency; a clear message if an environment lacks it
        raise ImportError(
            "language codes need the packages langcodes and language-data (pip install langcodes language-data)"
        ) from e
    return langcodes


@lru_cache(maxsize=4096)
def parse(code: str) -> LanguageCode:
    """Parse a language code written in any of the usual ways (see the module docstring)."""
    langcodes = _langcodes()
    text = str(code).strip()
    fallback = LanguageCode(str(code), text.lower(), text, False)
    if not text or text == "*":
        return fallback
    try:
        lang = langcodes.Language.get(text.replace("_", "-"), normalize=True)
    except (langcodes.tag_parser.LanguageTagError, ValueError):
        return fallback
    if not lang.language or lang.language == "und" or not lang.is_valid():
        return fallback
    base = langcodes.standardize_tag(lang.language, macro=True)  # arb -> ar, cmn -> zh, swh -> sw
    script = lang.maximize().script
    usual = langcodes.Language.get(base).maximize().script
    canonical = base if not script or script == usual else f"{base}-{script}"
    try:
        name = lang.display_name()
    except Exception:  # language-data missing: the code still maps, without a name
        name = text
    return LanguageCode(str(code), canonical, name, True)


def canonical_lang(code: str | None) -> str | None:
    """The canonical BCP 47 code of a language code (None stays None)."""
    return None if code is None else parse(code).canonical


def language_name(code: str | None) -> str | None:
    """English name of a language code, e.g. 'Standard Arabic' for arb (None stays None)."""
    return None if code is None else parse(code).name


def is_language_code(code: str, allow_iso639_3: bool = True) -> bool:
    """Whether a code names a registered language: ISO 639-1, ISO 639-3 (if allowed) or a FLORES code_Script."""
    text = code.strip()
    base, _, script = text.replace("-", "_").partition("_")
    if script and not (len(script) == 4 and script.isalpha() and script[0].isupper() and script[1:].islower()):
        return False
    lengths = (2, 3) if allow_iso639_3 or script else (2,)
    if not base.isalpha() or not base.islower() or len(base) not in lengths:
        return False
    return parse(text).known
