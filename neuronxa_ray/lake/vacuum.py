"""Vacuum: files a compaction superseded are deleted once no reader can still be using them, and the catalogue is
told (by a later compaction, or by `lake check --repair`)."""

from __future__ import annotations

import time

from neuronxa_ray.lake.catalog import Catalog, CatalogState, entry_name
from neuronxa_ray.lake.storage import Storage

VACUUM_S = 600.0  # superseded files outlive the switch by this long: queries that started before it still read them


def vacuum(storage: Storage, state: CatalogState | None, older_than_s: float = VACUUM_S) -> dict[str, float]:
    """Delete superseded files older than older_than_s that no catalogue record names; returns those kept. The
    catalogue entry saying so is applied to state too (a snapshot folded from it includes the entry)."""
    if state is None or not state.superseded:
        return {}
    named = {f["path"] for r in state.markers.values() for f in r.get("files") or []}
    cutoff = time.time() - older_than_s
    leased = {"/".join(e.path.split("/")[1:3]) for e in storage.list("_leases") if e.path.endswith(".json")}
    gone = [
        p
        for p, t in state.superseded.items()
        if (t <= cutoff or p in named) and "/".join(p.split("/")[1:3]) not in leased  # a run may write it again
    ]
    for path in gone:
        if path not in named:
            storage.delete(path)
            storage.prune_empty_dirs(path)
    if gone:
        rel = Catalog(storage).append(vacuumed=gone)
        state.apply(entry_name(rel), {"vacuumed": gone})
    return {p: t for p, t in state.superseded.items() if p not in gone}
