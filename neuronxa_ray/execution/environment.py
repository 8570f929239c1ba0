"""Ray and the machine: starting (or joining) Ray, checking that asked-for GPUs exist before it starts, and the
pool's shape (how many actors, with which resources and threads) from what the cluster has.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from neuronxa_ray.config.job import JobConfig
from neuronxa_ray.errors import NeuronxaError
from neuronxa_ray.execution.state import RunOptions


class RayAuthNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on by default (once per process is plenty: never)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def init_ray(address: str | None):
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS (or an address given) joins a cluster; otherwise a Ray of our own, even where another one
        # runs on this machine (ray.init() would silently join a `ray start` cluster found there).
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {}
        if address == "local":
            # A local Ray we start ourselves: the actors do the work, so they should not run at a lower priority
            # (Ray's default worker niceness is 15) than Ray's own housekeeping processes on a busy machine.
            kwargs["_system_config"] = {"worker_niceness": 0}
            # Ray enables token authentication for a new local cluster and says so on every start: a notice, not
            # news, in every run's output (RAY_AUTH_MODE still decides; its other messages pass).
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(RayAuthNotice())
        import signal
        import threading

        main_thread = threading.current_thread() is threading.main_thread()
        on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=False,
            **kwargs,
        )
        if callable(on_sigterm):  # ray.init sets a SIGTERM handler (sys.exit); the command's own one stays
            signal.signal(signal.SIGTERM, on_sigterm)
    return ray


def check_local_devices(jobs: list[JobConfig], options: RunOptions) -> None:
    """A CUDA device asked for on a machine without one fails before Ray starts (a cluster is checked on joining)."""
    import ray

    if options.ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return
    wanted = [job for job in jobs if job.device.startswith("cuda")]
    if wanted:
        import torch

        if not torch.cuda.is_available():
            raise NeuronxaError(
                f"{wanted[0].source}: device {wanted[0].device!r} asked for, but this machine has no CUDA GPU "
                "(set device: cpu or auto, or RAY_ADDRESS to a cluster with GPUs)"
            )


def pool_shape(ray, job: JobConfig) -> tuple[int, dict[str, float], int]:
    """(actors, ray options of each, torch threads of each): one per gpus_per_actor GPUs, else CPU actors."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if job.device.startswith("cuda") and not gpus:
        raise NeuronxaError(
            f"{job.source}: device {job.device!r} asked for, but the Ray cluster has no GPU "
            f"(resources: {dict(sorted(resources.items()))})"
        )
    if gpus and job.device != "cpu":
        n = job.num_actors or max(1, gpus // job.gpus_per_actor)
        return n, {"num_gpus": job.gpus_per_actor, "num_cpus": 1}, 1
    n = job.num_actors or 1
    node_cpus = [int(x.get("Resources", {}).get("CPU", 0)) for x in ray.nodes() if x.get("Alive")]
    cpus = max(1, min(max(node_cpus or [1]), int(resources.get("CPU", 1)) // n))
    return n, {"num_gpus": 0, "num_cpus": cpus}, cpus
