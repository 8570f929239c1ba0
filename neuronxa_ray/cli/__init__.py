"""The `neuronxa-ray` command, one module per command family: run (run, watch), query (sql, scores), results
(import-benchmarks, report), lake (check, compact); args holds what they share; main parses and dispatches and
turns a NeuronxaError into one line and an exit status.

May import every other package, lazily inside each command, so `neuronxa-ray --help` starts in milliseconds.
"""

from neuronxa_ray.cli.main import COMMANDS, build_parser, main
from neuronxa_ray.cli.query import print_scores

__all__ = ["COMMANDS", "build_parser", "main", "print_scores"]
