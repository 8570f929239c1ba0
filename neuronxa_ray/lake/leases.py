"""Leases: a run's claim on one (model, checkpoint) while it writes, so that runs with other settings are refused
and what a dead run left behind is tidied by the next one.

    {lake}/_leases/model={m}/checkpoint={c}/{run_id}.json   {run_id, checkpoint_fingerprint, host, pid, heartbeat}
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Protocol

from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.lake.catalog import stale_temporary
from neuronxa_ray.lake.layout import is_temporary, lease_dir, partition, slug
from neuronxa_ray.lake.schema import TABLES_WITH_MARKERS
from neuronxa_ray.lake.storage import Storage

log = logging.getLogger(__name__)

LEASE_TIMEOUT_S = 900.0  # a lease whose heartbeat is older than this is stale (its run died) and is taken over


class LakeRoot(Protocol):
    """The lake a lease is held in (the Lake): its storage and, for messages, its URI."""

    storage: Storage
    uri: str


@dataclass
class Lease:
    """A claim on (model, checkpoint) by one run: other runs with other settings are refused while it is live."""

    lake: LakeRoot
    model: str
    checkpoint: str
    checkpoint_fingerprint: str
    run_id: str
    path: str
    timeout_s: float

    def _record(self) -> dict:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "timeout_s": self.timeout_s,
        }

    def renew(self) -> None:
        """Refresh the heartbeat (call well within timeout_s, e.g. after each language)."""
        self.lake.storage.write_bytes(self.path, json.dumps(self._record()).encode())

    def release(self) -> None:
        self.lake.storage.delete(self.path)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease_alive(record: dict, age: float, timeout_s: float) -> bool:
    """A lease is live while its heartbeat is fresh and, on this host, its process still exists (a run killed with
    SIGKILL leaves a fresh heartbeat behind; on another host only the heartbeat's age can tell)."""
    if age > float(record.get("timeout_s", timeout_s)):
        return False
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
    return True


def read_lease(storage: Storage, path: str) -> tuple[dict, float]:
    """A lease's record and the age of its heartbeat in seconds (FileNotFoundError: released meanwhile; OSError,
    ValueError, KeyError or TypeError: unreadable)."""
    record = json.loads(storage.read_bytes(path))
    return record, time.time() - float(record["heartbeat"])


def acquire(
    lake: LakeRoot, model: str, checkpoint: str, checkpoint_fingerprint: str, run_id: str, timeout_s: float
) -> Lease:
    """Claim (model, checkpoint) for a run. Runs with the same checkpoint_fingerprint share it (they write the
    same bytes); a live lease with another fingerprint raises NeuronxaError naming that run; stale ones are taken
    over. Write-then-list: of two conflicting runs racing, at most one proceeds."""
    directory = lease_dir(model, checkpoint)
    lease = Lease(
        lake, model, checkpoint, checkpoint_fingerprint, run_id, f"{directory}/{slug(run_id)}.json", timeout_s
    )
    lease.renew()
    storage = lake.storage
    for e in storage.list(directory):
        if e.path == lease.path or not e.path.endswith(".json"):
            continue
        try:
            other, age = read_lease(storage, e.path)
        except FileNotFoundError:
            continue  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("lake %s: removing unreadable lease %s", lake.uri, e.path)
            storage.delete(e.path)
            continue
        if not lease_alive(other, age, timeout_s):
            log.warning(
                "lake %s: taking over the stale lease of run %s on %s (its process is gone, or no heartbeat for %.0fs)",
                lake.uri,
                other.get("run_id"),
                other.get("host"),
                age,
            )
            storage.delete(e.path)
            continue
        if other.get("checkpoint_fingerprint") != checkpoint_fingerprint:
            lease.release()
            raise NeuronxaError(
                f"lake {lake.uri!r}: {model} @ {checkpoint} is being written by run {other.get('run_id')} on "
                f"{other.get('host')} (pid {other.get('pid')}) with other settings (checkpoint_fingerprint "
                f"{other.get('checkpoint_fingerprint')!r}, this run {checkpoint_fingerprint!r}); wait for it, "
                "or write another lake"
            )
    return lease


def _other_leases(storage: Storage, model: str, checkpoint: str, run_id: str) -> tuple[list[str], list[str]]:
    """(live, dead) leases of one checkpoint held by runs other than run_id."""
    others, dead = [], []
    for e in storage.list(lease_dir(model, checkpoint)):
        if not e.path.endswith(".json"):
            continue
        try:
            record, age = read_lease(storage, e.path)
            alive = lease_alive(record, age, LEASE_TIMEOUT_S)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            alive, record = False, {}
        if record.get("run_id") == run_id:
            continue
        (others if alive else dead).append(e.path)
    return others, dead


def tidy(lake: LakeRoot, model: str, checkpoint: str, run_id: str) -> list[str]:
    """Delete what dead runs left in one checkpoint (temporary files, stale leases) when no other live run writes
    it; called by a run that holds its lease. Returns the deleted paths."""
    storage = lake.storage
    others, dead = _other_leases(storage, model, checkpoint, run_id)
    if others:
        return []
    deleted = [
        e.path
        for table in (*TABLES_WITH_MARKERS, "_done")  # a marker's write cut short is left as a temporary too
        for e in storage.list(partition(table, model, checkpoint))
        if is_temporary(e.path)
    ]
    deleted += [e.path for e in storage.list("_catalog") if stale_temporary(e)]
    for rel in deleted + dead:
        storage.delete(rel)
    if deleted or dead:
        log.info(
            "lake %s: removed %d file(s) left by interrupted runs of %s @ %s",
            lake.uri,
            len(deleted + dead),
            model,
            checkpoint,
        )
    return deleted + dead
