"""Lakes that stop answering: a write that failed and a probe of the lake that fails too start an outage; its units
wait (not placed) while it is probed with back-off; back within LAKE_OUTAGE_S, they are retried; else they fail
with an error naming the lake. Bookkeeping (runs, attempts, leases) never waits on a lake in an outage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from neuronxa_ray.execution.state import first_line
from neuronxa_ray.lake import Lake

log = logging.getLogger(__name__)

LAKE_OUTAGE_S = 60.0  # a lake that answers no probe for this long fails the units that write to it
LAKE_PROBE_S = (1.0, 8.0)  # first and longest pause between probes of a lake that stopped answering


@dataclass
class Outage:
    """A lake that stopped answering: its units wait (not placed) while it is probed with back-off."""

    since: float
    next_probe: float
    delay: float
    cause: str
    given_up: bool = False

    def error(self) -> str:
        return f"the lake stopped answering for {LAKE_OUTAGE_S:.0f}s ({self.cause})"


def probe(lake: Lake) -> str | None:
    """None when the lake takes a write (seconds at most), else one line naming it and the cause."""
    try:
        lake.storage.check_writable()  # a probe file written and deleted: no listing of the lake
        return None
    except Exception as e:
        return first_line(e)


class LakeWatch:
    """The outages of the lakes a run writes to, by URI."""

    def __init__(self, lakes: list[Lake]) -> None:
        self.lakes = {lake.uri: lake for lake in lakes}
        self.outages: dict[str, Outage] = {}

    def given_up(self, lake: Lake) -> Outage | None:
        outage = self.outages.get(lake.uri)
        return outage if outage is not None and outage.given_up else None

    def write_failed(self, lake: Lake) -> None:
        """A write to the lake failed: a lake that does not answer a probe either starts an outage."""
        if lake.uri in self.outages:
            return
        cause = probe(lake)
        if cause is not None:
            now = time.monotonic()
            self.outages[lake.uri] = Outage(now, now + LAKE_PROBE_S[0], LAKE_PROBE_S[0], cause)
            log.warning("%s; its units wait up to %.0fs for it to answer again", cause, LAKE_OUTAGE_S)

    def probe_due(self) -> list[str]:
        """Probe each lake in an outage whose pause is over; returns the URIs given up on just now (silent past
        LAKE_OUTAGE_S): their waiting units fail, those in flight fail as their writes do."""
        now, gone = time.monotonic(), []
        for uri, outage in list(self.outages.items()):
            if outage.given_up or now < outage.next_probe:
                continue
            cause = probe(self.lakes[uri])
            now = time.monotonic()
            if cause is None:
                log.warning("lake %s answers again after %.0fs; its units go on", uri, now - outage.since)
                del self.outages[uri]
            elif now - outage.since >= LAKE_OUTAGE_S:
                outage.given_up, outage.cause = True, cause
                gone.append(uri)
            else:
                outage.delay = min(outage.delay * 2, LAKE_PROBE_S[1])
                outage.next_probe, outage.cause = now + outage.delay, cause
        return gone

    def answers(self, lake: Lake, probe_now: bool = True) -> bool:
        """Whether bookkeeping should write to the lake: no outage known, or (probe_now) it answers again. A lake
        given up on is not probed again: its probe would wait out the client's own retries for nothing."""
        if lake.uri not in self.outages:
            return True
        if probe_now and not self.outages[lake.uri].given_up and probe(lake) is None:
            del self.outages[lake.uri]
            return True
        return False

    def down(self) -> list[str]:
        """The lakes given up on: they did not answer for LAKE_OUTAGE_S."""
        return sorted(uri for uri, outage in self.outages.items() if outage.given_up)

    def pause(self) -> bool:
        """Nothing in flight while units wait for a lake: sleep until its next probe is due (True), or False when no
        lake is being waited for."""
        waiting = [o.next_probe for o in self.outages.values() if not o.given_up]
        if not waiting:
            return False
        time.sleep(max(0.0, min(1.0, min(waiting) - time.monotonic())))
        return True
