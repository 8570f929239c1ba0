"""Downstream benchmark results per language (what alignment scores are correlated with): reading them from
CSV/JSON/lm-evaluation-harness files, checking their language codes and values, writing them to the lake.

May import: neuronxa_ray.lake, corpus.languages, errors. Never torch or Ray.
"""
