"""Downstream results into the lake's `benchmarks` table: from a plain table or from lm-evaluation-harness output.

A plain table (CSV, TSV or Parquet) has columns benchmark, lang, value and optionally model, checkpoint.
lm-evaluation-harness (0.4.x) writes `results_<date>.json` (older: `results.json`) whose `results` maps a task name
to metrics keyed "<metric>,<filter>" ("acc,none", "exact_match,strict-match", with "..._stderr,<filter>" and an
"alias"). Per-language tasks are named `<benchmark>_<language>` (`xnli_fr`, `belebele_fra_Latn`,
`mgsm_direct_fr`); `parse_task` splits them, and every row keeps the task and the metric it came from.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from neuronxa_ray.lake import SCHEMAS, Lake
from neuronxa_ray.languages import canonical_lang, is_language_code

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
            raise ValueError(f"no lm-evaluation-harness result files (results*.json) under {str(path)!r}")
        return files
    raise ValueError(f"benchmark file {str(path)!r} does not exist")


def read_lm_eval(path: str | Path, metric: str | None = None) -> list[LmEvalRow]:
    """Per-language results of every lm-eval result file at path (a file or a directory searched recursively)."""
    rows: list[LmEvalRow] = []
    for file in result_files(path):
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{file}: not a readable JSON file ({e})") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
            raise ValueError(f"{file}: no 'results' object (not an lm-evaluation-harness result file)")
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
        raise ValueError(
            f"{str(path)!r}: no per-language task (such as xnli_fr, belebele_fra_Latn) "
            + (f"with metric {metric!r} " if metric else "")
            + "in the lm-evaluation-harness results"
        )
    return rows


def lm_eval_table(rows: list[LmEvalRow], model: str | None = None, checkpoint: str | None = None) -> pa.Table:
    """Rows of the benchmarks table. model/checkpoint: the value to store (None = any), or "@results" for the
    file's own model name / revision. One row per benchmark, language, model and checkpoint: the newest file
    (its `date`) wins among files of the same model; files of different models for one row are an error."""
    chosen: dict[tuple, LmEvalRow] = {}
    for row in rows:
        stored_model = row.model if model == FROM_RESULTS else model
        stored_ckpt = row.revision if checkpoint == FROM_RESULTS else checkpoint
        key = (row.benchmark, row.lang, stored_model, stored_ckpt)
        old = chosen.get(key)
        if old is not None and (old.model, old.revision) != (row.model, row.revision):
            raise ValueError(
                f"{row.task}: results of several models ({old.model} in {old.source}, {row.model} in "
                f"{row.source}) would be stored as one; import them separately with --model NAME, or pass "
                f"--model {FROM_RESULTS} (and --checkpoint {FROM_RESULTS}) to keep each file's own"
            )
        if old is None or row.date >= old.date:
            if old is not None:
                log.info("%s: %s replaces %s (newer)", row.task, row.source, old.source)
            chosen[key] = row
    keys = list(chosen)
    cols = {
        "benchmark": [k[0] for k in keys],
        "lang": [k[1] for k in keys],
        "value": [chosen[k].value for k in keys],
        "model": [k[2] for k in keys],
        "checkpoint": [k[3] for k in keys],
        "lang_canonical": [canonical_lang(k[1]) for k in keys],
        "task": [chosen[k].task for k in keys],
        "metric": [chosen[k].metric for k in keys],
    }
    return pa.table(cols, schema=SCHEMAS["benchmarks"])


def read_table(path: str | Path) -> pa.Table:
    """A plain benchmark table (CSV, TSV or Parquet) as rows of the benchmarks table."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    src = Path(path)
    if src.suffix == ".parquet":
        table = pq.read_table(src)
    else:
        delimiter = "\t" if src.suffix == ".tsv" else ","
        table = pcsv.read_csv(src, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    missing = {"benchmark", "lang", "value"} - set(table.column_names)
    if missing:
        raise ValueError(f"{src}: missing columns {sorted(missing)} (need benchmark, lang, value)")
    schema = SCHEMAS["benchmarks"]
    cols = {}
    for f in schema:
        if f.name in table.column_names:
            cols[f.name] = table.column(f.name).cast(f.type)
        else:
            cols[f.name] = pa.nulls(table.num_rows, f.type)
    cols["lang_canonical"] = pa.array([canonical_lang(x) for x in cols["lang"].to_pylist()], pa.string())
    return pa.table(cols, schema=schema)


def import_benchmarks(
    lake_root: str | Path,
    path: str | Path,
    name: str | None = None,
    metric: str | None = None,
    model: str | None = None,
    checkpoint: str | None = None,
) -> tuple[pa.Table, Path]:
    """Store downstream results in the lake as benchmarks/<name>.parquet; returns the rows and the file.

    path: a CSV/TSV/Parquet table, an lm-eval result .json, or a directory of lm-eval results. metric, model and
    checkpoint apply to lm-eval results; for a table, model and checkpoint fill the rows that lack them."""
    src = Path(path)
    if src.is_dir() or src.suffix == ".json":
        table = lm_eval_table(read_lm_eval(src, metric), model, checkpoint)
    else:
        if not src.is_file():
            raise ValueError(f"benchmark file {str(src)!r} does not exist")
        if metric:
            raise ValueError(f"--metric applies to lm-evaluation-harness results, not to {str(src)!r}")
        if FROM_RESULTS in (model, checkpoint):
            raise ValueError(f"{FROM_RESULTS} applies to lm-evaluation-harness results, not to {str(src)!r}")
        table = read_table(src)
        for column, value in (("model", model), ("checkpoint", checkpoint)):
            if value is not None:
                i = table.schema.get_field_index(column)
                filled = [value if v is None else v for v in table.column(column).to_pylist()]
                table = table.set_column(i, table.schema.field(i), pa.array(filled, pa.string()))
    lake = Lake(lake_root)
    written = lake.write_benchmarks(name or src.stem, table)
    return table, lake.uri_of(written.path)
