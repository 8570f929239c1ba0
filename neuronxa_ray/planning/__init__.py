"""Planning: from jobs to units of work (model, checkpoint, language), minus what the lake verifiably holds;
fingerprints (what makes two results the same computation) and what a complete language holds.

May import: config, corpus, model.spec/model.resolve (no torch), lake, errors. Never torch or Ray.
"""

from neuronxa_ray.planning.plan import CheckpointPlan, plan_checkpoint, plan_jobs

__all__ = ["CheckpointPlan", "plan_checkpoint", "plan_jobs"]
