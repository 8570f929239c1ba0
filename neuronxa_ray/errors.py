"""The one user-facing error type: the CLI prints it in one line (`-v` adds the traceback); anything else keeps its
traceback, because it is a bug rather than a mistake in the input."""

from __future__ import annotations


class NeuronxaError(Exception):
    """A mistake in the input or the environment that the user can fix: names the thing, the value, the remedy."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt: the same clean unwinding (actors stopped, leases
    released, the lake resumable); the CLI exits 143 rather than 130."""


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: end the command as Ctrl-C would (see Terminated)."""
    raise Terminated()
