"""`lake check [--repair]`: what is broken, stale or orphaned and whether the catalogue agrees with the markers;
the repair deletes what is wrong (a rerun recomputes exactly those) and rebuilds the catalogue from the markers."""

from __future__ import annotations

import logging

from neuronxa_ray.lake.catalog import Catalog
from neuronxa_ray.lake.markers import MarkerSource
from neuronxa_ray.lake.scan import Scan, scan
from neuronxa_ray.lake.vacuum import vacuum
from neuronxa_ray.lake.visibility import Problem

log = logging.getLogger(__name__)


def check(lake: MarkerSource, repair: bool = False) -> list[Problem]:
    """What is broken (checksums included), stale or orphaned, and whether the catalogue agrees with the
    markers; with repair, delete what is wrong and rebuild the catalogue from the markers."""
    scanned = scan(lake, checksums=True)
    problems = scanned.problems + catalog_problems(scanned)
    if repair:
        for p in problems:
            for rel in p.delete:
                if lake.storage.delete(rel) or lake.storage.delete_directory(rel):
                    log.info("deleted %s", rel)
        if problems or scanned.catalog is not None:
            kept = vacuum(lake.storage, scanned.catalog)
            catalog = Catalog(lake.storage)
            catalog.rebuild(lake.marker_index, kept)
            if scanned.catalog_unreadable is not None:  # not before the rebuild: the newest snapshot would be an
                catalog.drop_unreadable(scanned.catalog_unreadable.path)  # older one, its folded entries maybe gone
            scanned = scan(lake, checksums=True)
        problems = scanned.problems + catalog_problems(scanned)
    return problems


def catalog_problems(scanned: Scan) -> list[Problem]:
    """The catalogue against the markers (both as read by the scan): unreadable, missing, or naming other
    records."""
    unreadable = scanned.catalog_unreadable
    if unreadable is not None:
        detail = f"unreadable ({unreadable.why}): every query reads every marker; --repair rebuilds the catalogue"
        return [Problem("catalogue", unreadable.path, detail + " and deletes it")]
    if scanned.catalog is None:
        if not scanned.parsed:
            return []
        detail = "the lake has no catalogue (written before catalogues): every query reads every marker"
        return [Problem("catalogue", "_catalog", detail + "; --repair builds it")]
    listed = scanned.catalog.markers
    differ = sorted(
        set(listed) ^ set(scanned.parsed)
        | {r for r in listed if r in scanned.parsed and not same_commit(listed[r], scanned.parsed[r])}
    )
    if not differ:
        return []
    detail = f"{len(differ)} marker(s) differ from the catalogue (e.g. {differ[0]}); --repair rebuilds it"
    return [Problem("catalogue", "_catalog", detail)]


def same_commit(a: dict, b: dict) -> bool:
    """Two records of one marker that differ only in who wrote them when (runs with the same settings write the
    same files)."""
    who = ("written_at", "host", "run_id")
    return {k: v for k, v in a.items() if k not in who} == {k: v for k, v in b.items() if k not in who}
