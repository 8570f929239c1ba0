"""Execution on Ray (the only package that imports Ray): a pool of long-lived actors pulls units of work.

A unit is one (model, checkpoint, language); planning decides which units a run needs. The scheduler
only places them:
- an actor keeps its loaded checkpoint while units of it remain and prefers them; when its checkpoint runs out it
  takes a checkpoint no one has started (about one load per checkpoint: loads <= checkpoints + actors), and the
  next checkpoint's weights load into host memory while the current one computes (prefetch);
- a checkpoint's pivot runs first; its states go to every actor once, through the object store (owned by the
  driver, so they survive the node that computed them); units of other checkpoints run while one waits for its
  pivot; with fewer checkpoints than actors, a checkpoint's languages spread over the actors;
- a unit whose actor or node dies is retried on another actor (max_attempts), the dead actor is replaced when the
  cluster has room, and work in flight on healthy actors is kept; a unit that fails by itself (bad data, a model
  error) fails alone, and the run ends non-zero with a table of failed units; a rerun computes what is missing;
- a lake that stops answering (a write fails and a probe of the lake fails too) holds its units while it is probed
  with back-off; back within LAKE_OUTAGE_S, they are retried; else they fail with an error naming the lake, the run
  ends with its table of failed units, and a rerun completes the lake. Bookkeeping writes (runs, attempts) never end
  a run;
- actors that cannot be placed within placement_timeout_s give an error naming what was asked and what the
  cluster has; every attempt is a row in the lake's `attempts` table;
- inside keep_actors() (kept), actors that end a run idle are kept for the next run of the same shape in this
  process instead of being started again (run_jobs' two phases, a watch poll's backlog, a notebook's block).

Why actors rather than Ray Data's map_batches: a language's per-neuron counters accumulate across its batches on
one device, and its cosine matrices against the pivot need all of its sentences and the pivot's states together
on that device; actors stream each language through one model so only summaries leave it.

Modules: state (units, queues, options; no Ray) -> policy (which work next: pure functions of the state) ->
kept (idle actors between runs) -> actor and pool (the Ray actors) -> dispatch (a pick becomes a Ray call) -> lakes
(outages), leases, bookkeeping (attempts and runs rows) -> scheduler (the loop) -> driver (run_jobs); pairs (every
pivot-language pair from stored states) and watch (run each checkpoint as it appears) sit beside the driver. Imports
only point down that list.
"""

from neuronxa_ray.execution.kept import keep_actors
from neuronxa_ray.execution.state import FailedUnit, RunOptions, RunReport

__all__ = ["FailedUnit", "RunOptions", "RunReport", "keep_actors", "run_jobs"]


def __getattr__(name: str):
    """run_jobs on first use: importing the policy or the state alone loads neither torch nor the driver."""
    if name == "run_jobs":
        from neuronxa_ray.execution.driver import run_jobs

        return run_jobs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
