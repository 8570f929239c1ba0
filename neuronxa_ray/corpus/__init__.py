"""Parallel sentences and the language codes that name them: reading a corpus (bundled UDHR, FLORES-style
directories, CSV/TSV/JSONL), and canonical language codes shared by the corpus, the downstream results and SQL.

May import: neuronxa_ray.errors and the standard library (langcodes for names). Never torch, Ray or the lake.
"""
