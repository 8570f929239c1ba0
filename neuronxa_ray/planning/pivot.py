"""Refusing to recompute a pivot with other settings while languages this run does not compute depend on the
stored one (they would drop out of every view), naming them, what differs, and the ways on.
"""

from __future__ import annotations

import json
import posixpath

from neuronxa_ray.config.job import Checkpoint, JobConfig
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake import Lake


def _dependents(lake: Lake, model: str, name: str, pivot: str, checkpoint_fp: str) -> list[str]:
    """Languages whose markers say they were scored against the stored pivot (computed with checkpoint_fp)."""
    prefix = posixpath.dirname(lake.done_marker(model, name, pivot, pivot))
    langs = []
    for entry in lake.storage.list(prefix):
        if not entry.path.endswith(".json"):
            continue
        try:
            record = json.loads(lake.storage.read_bytes(entry.path))
        except (OSError, ValueError):
            continue  # an unreadable marker is no result to lose
        if not isinstance(record, dict) or record.get("checkpoint_fingerprint") != checkpoint_fp:
            continue
        if isinstance(record.get("lang"), str) and record["lang"] != pivot:
            langs.append(record["lang"])
    return sorted(langs)


def _stored_settings(lake: Lake, model: str, name: str, checkpoint_fp: str) -> dict | None:
    """The job settings (config_json of its runs row) that computed checkpoint_fp, when a runs row says."""
    import pyarrow.parquet as pq

    for entry in lake.storage.list(lake._partition("runs", model, name)):
        try:
            with lake.storage.open_input_file(entry.path) as src:
                configs = pq.read_table(src, columns=["config_json"]).column("config_json").to_pylist()
        except Exception:  # an unreadable runs file: lake check reports it
            continue
        for text in configs:
            try:
                config = json.loads(text)
            except (TypeError, ValueError):
                continue
            if isinstance(config, dict) and config.get("fingerprint") == checkpoint_fp:
                return config
    return None


def refuse_replacing_pivot(
    job: JobConfig, checkpoint: Checkpoint, lake: Lake, stored_fp: str, languages: list[str], max_length: int | None
) -> None:
    """Recomputing the pivot with other settings makes every language scored against the stored one stale: refuse
    when some of them are not in this run (nothing would replace them), naming them, what differs, and the ways on."""
    model, name = job.model_name, checkpoint.name
    lost = [lang for lang in _dependents(lake, model, name, job.pivot, stored_fp) if lang not in languages]
    if not lost:
        return
    stored = _stored_settings(lake, model, name, stored_fp)
    now = {**job.fingerprint_settings(), "max_length": max_length}
    if stored is None:
        differs = "settings, weights or data differ"
    else:
        changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in now.items() if k in stored and stored.get(k) != v]
        if stored.get("pivot") != job.pivot:
            changed.append(f"pivot {stored.get('pivot')!r} -> {job.pivot!r}")
        differs = ", ".join(changed) if changed else "the weights or the data differ, the settings are the same"
    shown = ", ".join(lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
    raise NeuronxaError(
        f"{job.source}: {model} @ {name} would recompute its pivot {job.pivot!r} ({differs}) and so drop "
        f"{len(lost)} language(s) of lake {lake.uri} that this run does not compute ({shown}) out of every view; "
        "rerun with --force to replace them, or give this run another lake (--lake)"
    )


def resolve_pivots(pivots: list[str] | str | None, languages: list[str], where: str = "") -> list[str]:
    """The pivot languages of every (pivot, language) pair a job asks for: 'all' (or None) is every language; a
    list must name languages of the job. The one check, made when planning and again when pairs are computed."""
    if pivots is None or pivots == "all":
        return list(languages)
    if isinstance(pivots, str) or not all(isinstance(p, str) for p in pivots):
        raise NeuronxaError(f"{where}pivots = {pivots!r}: must be 'all' or a list of language codes")
    unknown = sorted(set(pivots) - set(languages))
    if unknown:
        raise NeuronxaError(f"{where}pivots {unknown} are not among the languages {sorted(languages)}")
    return list(pivots)
