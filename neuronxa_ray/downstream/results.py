"""Downstream results into the lake's `benchmarks` table: from a plain table or from lm-evaluation-harness output.

A plain table (CSV, TSV or Parquet) has columns benchmark, lang, value and optionally model, checkpoint.
lm-evaluation-harness (0.4.x) writes `results_<date>.json` (older: `results.json`) whose `results` maps a task name
to metrics keyed "<metric>,<filter>" ("acc,none", "exact_match,strict-match", with "..._stderr,<filter>" and an
"alias"). Per-language tasks are named `<benchmark>_<language>` (`xnli_fr`, `belebele_fra_Latn`,
`mgsm_direct_fr`); `parse_task` splits them, and every row keeps the task and the metric it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from neuronxa_ray.corpus.languages import canonical_lang, is_language_code, parse
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import SCHEMAS, Lake, slug

log = logging.getLogger(__name__)

# Multilingual task families of lm-evaluation-harness whose tasks end in a language code. For these a bare
# ISO 639-3 code is accepted too; any other task needs an ISO 639-1 code or a FLORES code_Script at its end
# (so `mmlu_professional_law` is not read as a benchmark in the language `law`).
TASK_FAMILIES = (
    "belebele",
    "xnli",
    "xstorycloze",
    "xcopa",
    "xwinograd",
    "pawsx",
    "paws",
    "mgsm_direct",
    "mgsm_native_cot",
    "mgsm_en_cot",
    "m_mmlu",
    "arc",
    "hellaswag",
    "global_mmlu",
    "lambada_openai_mt",
    "xquad",
    "flores",
)
BENCHMARK_ALIASES = {"paws": "pawsx"}  # lm-eval names the PAWS-X tasks paws_<lang>
METRIC_PREFERENCE = ("acc", "acc_norm", "exact_match")
FROM_RESULTS = "@results"  # --model / --checkpoint value: take it from each result file

_TASK = re.compile(r"^(?P<benchmark>[A-Za-z0-9_]+?)_(?P<lang>[a-z]{2,3}(?:_[A-Z][a-z]{3})?)$")


@dataclass(frozen=True)
class LmEvalRow:
    """One per-language result read from an lm-eval file."""

    benchmark: str
    lang: str
    value: float
    task: str
    metric: str
    model: str | None  # the file's model (model_args pretrained=, else model_name)
    revision: str | None  # the file's model_args revision=
    source: Path
    date: float


def parse_task(task: str) -> tuple[str, str] | None:
    """(benchmark, language code) of a per-language lm-eval task name, or None for any other task."""
    m = _TASK.match(task)
    if not m:
        return None
    benchmark, lang = m.group("benchmark"), m.group("lang")
    known = benchmark in TASK_FAMILIES
    if not is_language_code(lang, allow_iso639_3=known):
        return None
    last = benchmark.rsplit("_", 1)[-1]
    if not known and "_" in benchmark and is_language_code(last, allow_iso639_3=False):
        return None  # a translation pair such as wmt16_de_en
    return BENCHMARK_ALIASES.get(benchmark, benchmark), lang


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def choose_metric(metrics: dict[str, Any], metric: str | None = None) -> tuple[str, float] | None:
    """(metric key, value) of one task's metrics: `metric` if given (a name such as acc_norm, or a full key such
    as "exact_match,flexible-extract"), else acc, acc_norm, exact_match, else the first numeric metric. Among
    filters the "none" filter comes first, then the file's order. Standard errors are never chosen."""
    values = {}
    for key, raw in metrics.items():
        name = key.split(",", 1)[0]
        number = _number(raw)
        if number is not None and key != "alias" and not name.endswith("_stderr"):
            values[key] = number
    if not values:
        return None

    def pick(name: str) -> tuple[str, float] | None:
        if name in values:
            return name, values[name]
        keys = [k for k in values if k.split(",", 1)[0] == name]
        keys.sort(key=lambda k: k.split(",", 1)[1:] != ["none"])  # stable: "none" first, then file order
        return (keys[0], values[keys[0]]) if keys else None

    if metric is not None:
        return pick(metric)
    for name in METRIC_PREFERENCE:
        found = pick(name)
        if found:
            return found
    first = next(iter(values))
    return first, values[first]


def _model_args(config: dict[str, Any]) -> dict[str, str]:
    args = config.get("model_args") or {}
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    out = {}
    for part in str(args).split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def result_files(path: str | Path) -> list[Path]:
    """The lm-eval result files at path: the file itself, or every results*.json below a directory."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("results*.json") if p.is_file())
        if not files:
            raise NeuronxaError(f"no lm-evaluation-harness result files (results*.json) under {str(path)!r}")
        return files
    raise NeuronxaError(f"benchmark file {str(path)!r} does not exist")


def read_lm_eval(path: str | Path, metric: str | None = None) -> list[LmEvalRow]:
    """Per-language results of every lm-eval result file at path (a file or a directory searched recursively)."""
    rows: list[LmEvalRow] = []
    for file in result_files(path):
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise NeuronxaError(f"{file}: not a readable JSON file ({e})") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
            raise NeuronxaError(f"{file}: no 'results' object (not an lm-evaluation-harness result file)")
        config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        args = _model_args(config)
        model = args.get("pretrained") or args.get("model") or doc.get("model_name") or None
        date = _number(doc.get("date")) or file.stat().st_mtime
        skipped = []
        for task, metrics in doc["results"].items():
            parsed = parse_task(task)
            if parsed is None or not isinstance(metrics, dict):
                skipped.append(task)
                continue
            found = choose_metric(metrics, metric)
            if found is None:
                log.warning("%s: task %s has no metric %s; skipped", file, task, metric or "with a number")
                continue
            rows.append(LmEvalRow(*parsed, found[1], task, found[0], model, args.get("revision"), file, date))
        if skipped:
            log.info("%s: %d tasks without a language suffix skipped: %s", file, len(skipped), ", ".join(skipped))
    if not rows:
        raise NeuronxaError(
            f"{str(path)!r}: no per-language task (such as xnli_fr, belebele_fra_Latn) "
            + (f"with metric {metric!r} " if metric else "")
            + "in the lm-evaluation-harness results"
        )
    return rows


def lm_eval_table(rows: list[LmEvalRow], model: str | None = None, checkpoint: str | None = None) -> pa.Table:
    """Rows of the benchmarks table. model/checkpoint: the value to store (None = any), or "@results" for the
    file's own model name / revision. One row per benchmark, language (canonical code), model and checkpoint: the
    newest file (its `date`) wins among files of the same model (reported); files of different models for one row,
    and two tasks of one file with different values for one row, are errors."""
    chosen: dict[tuple, LmEvalRow] = {}
    replaced: list[str] = []
    for row in rows:
        stored_model = row.model if model == FROM_RESULTS else model
        stored_ckpt = row.revision if checkpoint == FROM_RESULTS else checkpoint
        key = (row.benchmark, canonical_lang(row.lang), stored_model, stored_ckpt)
        old = chosen.get(key)
        if old is not None and (old.model, old.revision) != (row.model, row.revision):
            raise NeuronxaError(
                f"{row.task}: results of several models ({old.model} in {old.source}, {row.model} in "
                f"{row.source}) would be stored as one; import them separately with --model NAME, or pass "
                f"--model {FROM_RESULTS} (and --checkpoint {FROM_RESULTS}) to keep each file's own"
            )
        if old is not None and old.source == row.source:
            if _same(old.value, row.value):
                continue
            raise NeuronxaError(
                f"{row.source}: tasks {old.task} ({old.value:g}) and {row.task} ({row.value:g}) are both "
                f"{describe(key)}; keep one of them in the file"
            )
        if old is None or row.date >= old.date:
            if old is not None and not _same(old.value, row.value):
                replaced.append(f"{row.task} {old.value:g} ({old.source}) -> {row.value:g} ({row.source})")
            chosen[key] = row
    if replaced:
        log.warning(
            "%d result(s) of older lm-eval runs replaced by newer runs of the same model: %s%s",
            len(replaced),
            "; ".join(replaced[:3]),
            f"; and {len(replaced) - 3} more" if len(replaced) > 3 else "",
        )
    keys = list(chosen)
    cols = {
        "benchmark": [k[0] for k in keys],
        "lang": [chosen[k].lang for k in keys],
        "value": [chosen[k].value for k in keys],
        "model": [k[2] for k in keys],
        "checkpoint": [k[3] for k in keys],
        "lang_canonical": [k[1] for k in keys],
        "task": [chosen[k].task for k in keys],
        "metric": [chosen[k].metric for k in keys],
    }
    return pa.table(cols, schema=SCHEMAS["benchmarks"])


# ------------------------------------------------------------------------------------------- identity and checks
# A downstream result is identified by (benchmark, canonical language, model, checkpoint): `fr`, `fra` and
# `fra_Latn` are one language, a NULL model or checkpoint means "any". One value per identity in the lake.


def row_key(row: dict) -> tuple[str, str, str | None, str | None]:
    """The identity of a benchmarks row (a dict of its columns)."""
    lang = row.get("lang_canonical") or canonical_lang(row["lang"])
    return (row["benchmark"], lang, row.get("model") or None, row.get("checkpoint") or None)


def describe(key: tuple) -> str:
    benchmark, lang, model, checkpoint = key
    return f"{benchmark} {lang} (model {model or 'any'}, checkpoint {checkpoint or 'any'})"


def _same(a: float | None, b: float | None) -> bool:
    """Whether two stored values are one value (equal up to float rounding; NULL and NaN equal only themselves)."""
    if a is None or b is None:
        return a is b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def _table_kind(src: Path) -> str:
    return {".parquet": "Parquet", ".tsv": "TSV"}.get(src.suffix, "CSV")


MISSING_MARKS = {"", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None"}  # an optional column's "none given"
KNOWN_COLUMNS = frozenset(f.name for f in SCHEMAS["benchmarks"]) - {"lang_canonical"}  # what an import may give


def _known_columns(table: pa.Table, src: Path) -> tuple[pa.Table, list[str]]:
    """The table's columns renamed to the benchmarks table's where they differ only in case or spaces ("Model" is
    model: dropped, its rows would count for every model), and the other columns (not stored)."""
    folded = [n.strip().lower() for n in table.column_names]
    names = [f if f in KNOWN_COLUMNS else n for n, f in zip(table.column_names, folded)]
    twice = sorted({n for n in names if n in KNOWN_COLUMNS and names.count(n) > 1})
    if twice:
        same = [c for c, f in zip(table.column_names, folded) if f in twice]
        raise NeuronxaError(f"{src}: columns {same} are the same column {twice[0]!r}: keep one")
    return table.rename_columns(names), [n for n in names if n not in KNOWN_COLUMNS]


def _where(src: Path, index: int) -> str:
    """Where row `index` of a plain table is, for messages: a CSV/TSV line (after the header) or a Parquet row."""
    return f"row {index + 1}" if src.suffix == ".parquet" else f"line {index + 2}"


def read_table(path: str | Path) -> pa.Table:
    """A plain benchmark table (CSV, TSV or Parquet) as rows of the benchmarks table. Every row needs a benchmark,
    a language and a finite number; a mistake is an error naming the file, the line and the value."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    src = Path(path)
    kind = _table_kind(src)
    try:
        if src.suffix == ".parquet":
            table = pq.read_table(src)
        else:
            delimiter = "\t" if src.suffix == ".tsv" else ","
            parse = pcsv.ParseOptions(delimiter=delimiter)
            # the known columns (in any case) read as text: a value must be a finite number ("NaN" is not), a
            # language code a code ("nan", "NA"); the optional columns' usual missing-value marks are missing
            with pcsv.open_csv(src, parse_options=parse) as reader:  # the header as Arrow reads it (.gz included)
                names = reader.schema.names
            as_text = {name: pa.string() for name in names if name.strip().lower() in KNOWN_COLUMNS}
            table = pcsv.read_csv(
                src,
                parse_options=parse,
                convert_options=pcsv.ConvertOptions(
                    column_types=as_text, strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=True
                ),
            )
    except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
        first = " ".join(str(e).split())[:200]
        raise NeuronxaError(f"{src}: not a readable {kind} table ({first})") from None
    table, ignored = _known_columns(table, src)
    missing = {"benchmark", "lang", "value"} - set(table.column_names)
    if missing:
        raise NeuronxaError(
            f"{src}: missing column(s) {sorted(missing)} (a {kind} table needs benchmark, lang, value; it has "
            f"{table.column_names})"
        )
    if ignored:
        log.warning("%s: column(s) %s not stored (known: %s)", src, ignored, ", ".join(sorted(KNOWN_COLUMNS)))
    if table.num_rows == 0:
        raise NeuronxaError(f"{src}: no rows (a {kind} table of benchmark, lang, value)")
    schema = SCHEMAS["benchmarks"]
    raw = {f.name: table.column(f.name).to_pylist() if f.name in table.column_names else None for f in schema}
    cols: dict[str, list] = {f.name: [] for f in schema}
    for i in range(table.num_rows):
        for column in ("benchmark", "lang"):
            value = raw[column][i]
            if value is None or not str(value).strip():
                raise NeuronxaError(f"{src}: {_where(src, i)}: empty {column!r}")
        value = raw["value"][i]
        number = None
        if not isinstance(value, bool):
            try:
                number = float(str(value).strip()) if isinstance(value, str) else float(value)
            except (TypeError, ValueError):
                number = None
        if number is None or not math.isfinite(number):
            shown = "empty" if value is None else repr(value)
            raise NeuronxaError(f"{src}: {_where(src, i)}: value {shown} is not a finite number")
        cols["benchmark"].append(str(raw["benchmark"][i]).strip())
        cols["lang"].append(str(raw["lang"][i]).strip())
        cols["value"].append(number)
        for column in ("model", "checkpoint", "task", "metric"):
            v = raw[column][i] if raw[column] is not None else None
            v = str(v).strip() if v is not None else ""
            cols[column].append(None if v in MISSING_MARKS else v)
    cols["lang_canonical"] = [canonical_lang(x) for x in cols["lang"]]
    return pa.table(cols, schema=schema)


def _lake_languages(lake: Lake) -> set[str]:
    """The languages (as slugs) the lake holds completion markers for: from one listing of _done/ (marker paths
    end in lang={slug}.json; the matches files of a compacted checkpoint no longer name their languages)."""
    found = set()
    for rel in lake.storage.sizes("_done"):
        m = re.search(r"/lang=([^/]+)\.json$", rel)
        if m:
            found.add(m.group(1))
    return found


def check_rows(table: pa.Table, source: str, where: list[str], lake: Lake | None = None) -> tuple[pa.Table, list[str]]:
    """The rows of one import, checked: every language code known (or one the lake holds scores for), one value
    per identity (an exact repeat is dropped; two values are an error naming both). where[i]: row i's place.
    Returns the rows kept and their places."""
    rows = table.to_pylist()
    unknown = [(r["lang"], where[i]) for i, r in enumerate(rows) if not parse(r["lang"]).known]
    if unknown and lake is not None and lake.exists():
        held = _lake_languages(lake)
        unknown = [(code, w) for code, w in unknown if slug(code) not in held]
    if unknown:
        shown = ", ".join(f"{code!r} ({w})" for code, w in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise NeuronxaError(
            f"{source}: unknown language code(s) {shown}{more}: use ISO 639 codes such as fr, fra or fra_Latn"
        )
    first: dict[tuple, int] = {}
    keep = []
    for i, row in enumerate(rows):
        key = row_key(row)
        j = first.get(key)
        if j is None:
            first[key] = i
            keep.append(i)
        elif not _same(rows[j]["value"], row["value"]):
            raise NeuronxaError(
                f"{source}: two values for {describe(key)}: {rows[j]['value']:g} ({where[j]}, lang "
                f"{rows[j]['lang']!r}) and {row['value']:g} ({where[i]}, lang {row['lang']!r}); keep one"
            )
        else:
            log.info("%s: %s repeats %s with the same value; stored once", source, where[i], where[j])
    if len(keep) == len(rows):
        return table, where
    return table.take(pa.array(keep, pa.int64())), [where[i] for i in keep]


# ------------------------------------------------------------------------------------------------ the import


@dataclass
class Imported:
    """What an import stored: its rows, the file (URI) they went to, and what it replaced or renamed."""

    table: pa.Table
    uri: str
    notes: list[str]


def _stored(lake: Lake) -> dict[str, list[dict]]:
    """Rows of every readable benchmarks file of the lake, by path (unreadable files skipped with a warning)."""
    import pyarrow.parquet as pq

    out = {}
    for rel in sorted(lake.files("benchmarks")):
        try:
            with lake.storage.open_input_file(rel) as f:
                out[rel] = pq.read_table(f).to_pylist()
        except (OSError, pa.ArrowException) as e:
            log.warning("lake %s: skipped unreadable file %s (%s)", lake.uri, rel, " ".join(str(e).split())[:120])
    return out


def _summary(rows: list[dict]) -> str:
    benchmarks = sorted({r["benchmark"] for r in rows})
    models = sorted({r.get("model") or "any" for r in rows})
    return f"{len(rows)} rows of {', '.join(benchmarks[:4])} for model(s) {', '.join(models[:3])}"


def _digest(keys: set[tuple]) -> str:
    return hashlib.sha256(json.dumps(sorted(keys, key=str), default=str).encode()).hexdigest()[:8]


def import_benchmarks(
    lake_root: str | Path,
    path: str | Path,
    name: str | None = None,
    metric: str | None = None,
    model: str | None = None,
    checkpoint: str | None = None,
    replace: bool = False,
) -> Imported:
    """Store downstream results in the lake as benchmarks/<name>.parquet.

    path: a CSV/TSV/Parquet table, an lm-eval result .json, or a directory of lm-eval results. metric, model and
    checkpoint apply to lm-eval results; for a table, model and checkpoint fill the rows that lack them.

    Identity: one value per (benchmark, canonical language, model, checkpoint) in the whole lake. A value that
    differs from one already stored (by any import) is refused, naming both, unless `replace`: then the new value
    wins and the old row is removed from its file (reported). Each import keeps its own file: the default name is
    the input's stem, or, when a file of that name holds another import (rows this one does not cover), the stem
    plus a digest of this import's identities; an explicit `name` that holds another import needs `replace`."""
    src = Path(path)
    table, where = _read_input(src, metric, model, checkpoint)
    lake = Lake(lake_root)
    lake.check_writable()  # a missing bucket or bad credentials fail here, as `run` does
    table, where = check_rows(table, str(src), where, lake)
    new = {row_key(r): r for r in table.to_pylist()}
    stored = _stored(lake)
    notes: list[str] = []
    target = _target(lake, stored, new, name or src.stem, name is not None, replace, notes)
    conflicts = [  # (key, stored file, old value, new value)
        (row_key(r), rel, r["value"], new[row_key(r)]["value"])
        for rel, rows in stored.items()
        for r in rows
        if row_key(r) in new and not _same(r["value"], new[row_key(r)]["value"])
    ]
    if conflicts and not replace:
        key, rel, old, value = conflicts[0]
        i = list(new).index(key)
        hint = " (or --model NAME to keep models apart)" if key[2] is None else ""
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise NeuronxaError(
            f"{describe(key)} is {old:g} in {lake.uri_of(rel)} and {value:g} in {src} ({where[i]}){more}; pass "
            f"--replace to let the new values win{hint}"
        )
    written = lake.write_benchmarks(target.removeprefix("benchmarks/").removesuffix(".parquet"), table)
    if conflicts:
        _replace_old(lake, stored, conflicts, target, notes)
    return Imported(table, lake.uri_of(written.path), notes)


def _read_input(src: Path, metric: str | None, model: str | None, checkpoint: str | None) -> tuple[pa.Table, list]:
    """The input's rows, and where each came from (an lm-eval task, a file's line)."""
    if src.is_dir() or src.suffix == ".json":
        table = lm_eval_table(read_lm_eval(src, metric), model, checkpoint)
        return table, [f"task {t}" for t in table.column("task").to_pylist()]
    if not src.is_file():
        raise NeuronxaError(f"benchmark file {str(src)!r} does not exist")
    if metric:
        raise NeuronxaError(f"--metric applies to lm-evaluation-harness results, not to {str(src)!r}")
    if FROM_RESULTS in (model, checkpoint):
        raise NeuronxaError(f"{FROM_RESULTS} applies to lm-evaluation-harness results, not to {str(src)!r}")
    table = read_table(src)
    for column, value in (("model", model), ("checkpoint", checkpoint)):
        if value is not None:
            i = table.schema.get_field_index(column)
            filled = [value if v is None else v for v in table.column(column).to_pylist()]
            table = table.set_column(i, table.schema.field(i), pa.array(filled, pa.string()))
    return table, [_where(src, i) for i in range(table.num_rows)]


def _target(lake: Lake, stored: dict, new: dict, base: str, named: bool, replace: bool, notes: list[str]) -> str:
    """The file this import is stored as: its name, unless that holds another import (then, unnamed, the name plus
    a digest of this import's identities; named, only with replace)."""
    target = f"benchmarks/{slug(base)}.parquet"
    if target in stored and not {row_key(r) for r in stored[target]} <= set(new):
        if not named:
            renamed = f"benchmarks/{slug(f'{base}-{_digest(set(new))}')}.parquet"
            notes.append(f"{target} holds another import ({_summary(stored[target])}): stored as {renamed}")
            target = renamed
        if target in stored and not {row_key(r) for r in stored[target]} <= set(new):
            if not replace:
                raise NeuronxaError(
                    f"{lake.uri_of(target)} holds another import ({_summary(stored[target])}): choose another "
                    "--name, or pass --replace to replace it"
                )
            notes.append(f"replaced {target} ({_summary(stored[target])})")
    return target


def _replace_old(lake: Lake, stored: dict, conflicts: list, target: str, notes: list[str]) -> None:
    """The new values won: remove the old rows from their files (a file left empty is deleted), and say so."""
    shown = "; ".join(f"{describe(k)} {old:g} -> {value:g} ({rel})" for k, rel, old, value in conflicts[:3])
    more = f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
    notes.append(f"replaced {len(conflicts)} value(s): {shown}{more}")
    gone = {(rel, k) for k, rel, _, _ in conflicts}
    for rel in sorted({rel for _, rel, _, _ in conflicts} - {target}):
        kept = [r for r in stored[rel] if (rel, row_key(r)) not in gone]
        if kept:
            lake.write("benchmarks", pa.Table.from_pylist(kept, schema=SCHEMAS["benchmarks"]), rel)
        else:
            lake.storage.delete(rel)
