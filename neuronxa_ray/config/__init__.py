"""Job configuration: the JobConfig a job file becomes (job) and reading and validating YAML into it (load).

May import: neuronxa_ray.model.spec (ModelSpec, hook sites), corpus, errors, yaml. Never torch, Ray or the lake:
checking a job file is instant.
"""

from neuronxa_ray.config.job import Checkpoint, CheckpointGlob, DataSpec, JobConfig
from neuronxa_ray.config.load import job_from_dict, load_job

__all__ = ["Checkpoint", "CheckpointGlob", "DataSpec", "JobConfig", "job_from_dict", "load_job"]
