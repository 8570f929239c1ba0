"""The methods a score is computed with: their names in the lake, their labels in print, and what `layer` means.

Owns the one list of methods; everything that prints, draws or extracts them imports it from here. No dependencies.
"""

from __future__ import annotations

METHODS = ("nas", "nav", "hidden", "hidden_last")  # in the order they are printed and drawn
METHOD_LABELS = {"nas": "NASCA", "nav": "NAVCA", "hidden": "MEXA", "hidden_last": "MEXA-last"}
FFN_METHODS = ("nas", "nav")  # their `layer` is a transformer block
HIDDEN_METHODS = ("hidden", "hidden_last")  # their `layer` indexes hidden_states: 0 = embeddings, i+1 = block i
EMBEDDINGS = -1  # the block column's value for the embeddings (hidden_states[0])


def label(method: str) -> str:
    """NASCA, NAVCA, MEXA, MEXA-last; an unknown method prints as itself."""
    return METHOD_LABELS.get(method, method)


def block_of(method: str, layer: int) -> int:
    """The transformer block a row's `layer` refers to: FFN methods count blocks from 0, hidden-state methods
    count hidden_states (0 = the embeddings, which is EMBEDDINGS here)."""
    return layer - 1 if method in HIDDEN_METHODS else layer
