"""Fingerprints: what makes two results the same computation. A checkpoint's covers everything that changes
its numbers: the settings marked in JobConfig, the weights (file names, sizes and modification times of a local
directory or GGUF; the resolved commit of a hub id), the pivot, the sentence ids and the pivot's texts. A
language's adds its own texts; a pair's joins its two languages'.
"""

from __future__ import annotations

import hashlib
import json

from neuronxa_ray.config.job import JobConfig
from neuronxa_ray.corpus.readers import ParallelCorpus
from neuronxa_ray.lake import SCHEMA_VERSION
from neuronxa_ray.model.resolve import ResolvedModel

METHOD_VERSION = "2"  # bump when the extraction or scoring changes numbers for the same inputs


def _digest(material: object) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_fingerprint(job: JobConfig, resolved: ResolvedModel, corpus: ParallelCorpus) -> str:
    return _digest(
        {
            "settings": job.fingerprint_settings(),
            "weights": resolved.identity,
            "pivot": job.pivot,
            "ids": corpus.ids,
            "pivot_text": corpus.sentences[job.pivot],
            "schema": SCHEMA_VERSION,
            "method": METHOD_VERSION,
        }
    )


def language_fingerprint(checkpoint_fp: str, lang: str, corpus: ParallelCorpus) -> str:
    return _digest({"checkpoint": checkpoint_fp, "lang": lang, "text": corpus.sentences[lang]})


def variant_fingerprint(checkpoint_fp: str, intervention: str, neurons_fp: str) -> str:
    """A checkpoint evaluated with neurons switched off: its own fingerprint, changed with the neuron set."""
    return _digest({"checkpoint": checkpoint_fp, "intervention": intervention, "neurons": neurons_fp})
