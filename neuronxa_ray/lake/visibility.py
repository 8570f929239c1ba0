"""Which verified languages the views count (the consistency rules), and what `lake check` reports: shared by
the scan (every marker), the catalogue (kept in its snapshots) and the opening of the lake."""

from __future__ import annotations

from dataclasses import dataclass

from neuronxa_ray.lake.layout import done_marker
from neuronxa_ray.lake.markers import pair_fingerprint


@dataclass(frozen=True)
class Problem:
    """Something `lake check` found: kind is broken | stale | orphaned | temporary | stale-lease | legacy |
    catalogue."""

    kind: str
    path: str  # the marker, file or lease (relative to the lake root)
    detail: str
    delete: tuple[str, ...] = ()  # what --repair deletes

    def __str__(self) -> str:
        return f"{self.kind:<11} {self.path}: {self.detail}"


LEFT_OUT_BROKEN = "whose files are missing or changed"
LEFT_OUT_SOURCES = "whose source languages changed or are gone"
LEFT_OUT_PIVOT = "whose pivot is missing or does not verify"
LEFT_OUT_SETTINGS = "computed with other settings or weights than their pivot"
LEFT_OUT_PRECISION = "computed at another precision than their pivot (rerun with --force, or set dtype and device)"


def label_of(record: dict | None, rel: str) -> str:
    if isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("model", "checkpoint", "lang")):
        pivot = record.get("pivot_lang")
        pair = f"{pivot}-{record['lang']}" if record.get("sources") and isinstance(pivot, str) else record["lang"]
        return f"{record['model']} @ {record['checkpoint']}: {pair}"
    return f"{rel}:"


class _LeftOut:
    """(reason, label) lines of left-out languages, and marker path -> (reason, label) when asked."""

    def __init__(self, why: dict[str, tuple[str, str]] | None) -> None:
        self.lines: list[tuple[str, str]] = []
        self.why = why

    def add(self, rel: str, reason: str, label: str) -> None:
        self.lines.append((reason, label))
        if self.why is not None:
            self.why[rel] = (reason, label)


def visible(
    ok: dict[str, dict], done_marker=done_marker, why: dict[str, tuple[str, str]] | None = None
) -> tuple[list[dict], list[Problem], list[str], list[tuple[str, str]]]:
    """The consistency rules over verified markers (path -> record): a language counts when its pivot's marker
    verifies with the same checkpoint_fingerprint and precision; a pair computed from stored states (`sources`)
    when both sources verify with the fingerprints it was computed from. Returns (complete records, stale
    problems, one line per left-out language, (reason, label) per left-out language); why, when given, gets
    marker path -> (reason, label) of each left-out one. The rules are local to a (model, checkpoint): a
    language's pivot and a pair's sources are markers of its own checkpoint."""
    complete, problems, excluded = [], [], []
    left_out = _LeftOut(why)
    pivots: dict[tuple[str, str, str], str] = {}  # done_marker slugs every value: once per checkpoint and pivot
    for rel, record in ok.items():
        what = f"{record['model']} @ {record['checkpoint']}, pivot {record['pivot_lang']}, {record['lang']}"
        label = label_of(record, rel)
        if "sources" in record:  # a pair computed from two languages' stored states: both must be current
            gone = [r for r in record["sources"] if r not in ok]
            other = [
                r
                for r in record["sources"]
                if r in ok and ok[r].get("checkpoint_fingerprint") != record.get("checkpoint_fingerprint")
            ]
            fps = [ok[r]["fingerprint"] for r in record["sources"]] if not gone else []
            if not gone and (len(fps) != 2 or record.get("fingerprint") != pair_fingerprint(*fps)):
                other = list(record["sources"])  # a source language was recomputed since the pair was
            if gone or other:
                detail = f"its source languages changed or are gone ({', '.join(gone + other)})"
                excluded.append(f"{what}: {detail}")
                left_out.add(rel, LEFT_OUT_SOURCES, label)
                problems.append(Problem("stale", rel, detail, (rel,)))
            else:
                complete.append(record)
            continue
        key = (record["model"], record["checkpoint"], record["pivot_lang"])
        pivot_rel = pivots.get(key) or pivots.setdefault(key, done_marker(*key, record["pivot_lang"]))
        pivot = ok.get(pivot_rel)
        if pivot is None:
            excluded.append(f"{what}: its pivot's marker {pivot_rel} is missing or does not verify")
            left_out.add(rel, LEFT_OUT_PIVOT, label)
            continue
        if pivot.get("checkpoint_fingerprint") != record.get("checkpoint_fingerprint"):
            detail = (
                f"computed with other settings or weights than its pivot (checkpoint_fingerprint "
                f"{record.get('checkpoint_fingerprint')!r} vs {pivot.get('checkpoint_fingerprint')!r})"
            )
            excluded.append(f"{what}: {detail}")
            left_out.add(rel, LEFT_OUT_SETTINGS, label)
            problems.append(Problem("stale", rel, detail, (rel,)))
            continue
        if pivot.get("precision") and record.get("precision") and pivot["precision"] != record["precision"]:
            detail = (
                f"computed as {record['precision']}, its pivot as {pivot['precision']} (dtype or device 'auto' "
                "resolved on other hardware): rerun with --force, or set dtype and device"
            )
            excluded.append(f"{what}: {detail}")
            left_out.add(rel, LEFT_OUT_PRECISION, f"{label} as {record['precision']}, pivot {pivot['precision']}")
            problems.append(Problem("stale", rel, detail, (rel,)))
            continue
        complete.append(record)
    return complete, problems, excluded, left_out.lines
