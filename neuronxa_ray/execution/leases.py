"""This run's claim on the checkpoints it writes: a lease per (model, checkpoint), taken before any work (a
concurrent run with other settings is refused), renewed every LEASE_RENEW_S, released at the end; what killed
runs left in a checkpoint is tidied once its lease is held, and what this run's lost actors left (a write cut by a
lost node) before a finished run lets it go.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection

from neuronxa_ray.execution.lakes import LakeWatch
from neuronxa_ray.execution.state import first_line
from neuronxa_ray.lake import Lake
from neuronxa_ray.planning.plan import CheckpointPlan

log = logging.getLogger(__name__)

LEASE_RENEW_S = 60.0  # heartbeat of this run's checkpoint leases (they go stale after 15 minutes without one)


class RunLeases:
    def __init__(self, plans: list[CheckpointPlan], lakes: dict[int, Lake], run_id: str, watch: LakeWatch) -> None:
        self.plans, self.lakes, self.run_id, self.watch = plans, lakes, run_id, watch
        self.held: list = []  # (plan index, lease)
        self._last_renew = time.monotonic()

    def acquire(self) -> None:
        """Claim every checkpoint this run writes; raises (releasing what it took) if another run with other
        settings is writing one of them."""
        for pi, plan in enumerate(self.plans):
            try:
                self.held.append((pi, self.lakes[pi].acquire(*plan.key, plan.fingerprint, self.run_id)))
                self.lakes[pi].tidy(*plan.key, self.run_id)  # what killed runs left behind in this checkpoint
            except Exception:
                self.release()
                raise

    def renew_due(self) -> None:
        if time.monotonic() - self._last_renew <= LEASE_RENEW_S:
            return
        self._last_renew = time.monotonic()
        for _, lease in self.held:
            if lease.lake.uri in self.watch.outages:
                continue
            try:
                lease.renew()
            except Exception as e:  # a lease stays valid for 15 minutes: the next heartbeat may get through
                log.warning("could not renew the lease %s: %s", lease.path, first_line(e))

    def release(self, tidy: Collection[int] = ()) -> None:
        """Let every lease go; tidy: the plans whose temporary files this run's lost actors left are cleared first
        (pass them only once every write of the run is settled, so none is a write still under way)."""
        for pi, lease in self.held:
            if lease.lake.uri in self.watch.outages:  # not waiting for a lake that does not answer: it goes stale
                continue
            if pi in tidy:
                try:
                    self.lakes[pi].tidy(*self.plans[pi].key, self.run_id)
                except Exception as e:  # housekeeping must not end a run: the next run or `lake check --repair` will
                    log.warning("could not tidy %s: %s", lease.path, first_line(e))
            with contextlib.suppress(Exception):  # a lease left behind goes stale and is taken over
                lease.release()
        self.held = []
