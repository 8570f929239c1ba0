"""The one user-facing error type: the CLI prints it in one line (`-v` adds the traceback); anything else keeps its
traceback, because it is a bug rather than a mistake in the input."""

from __future__ import annotations


class NeuronxaError(Exception):
    """A mistake in the input or the environment that the user can fix: names the thing, the value, the remedy."""


def no_such(what: str, value: str, known, where: str = "", place: str = "") -> NeuronxaError:
    """The error for a name asked for that is not there (a typo would otherwise select nothing, silently):
    "{where}no {what} 'x'{place}; did you mean 'y'? (it has [...])", the closest known name suggested."""
    import difflib

    values = sorted(known)
    hint = difflib.get_close_matches(value, values, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    return NeuronxaError(f"{where}no {what} {value!r}{place}{extra} (it has {values[:20]})")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt: the same clean unwinding (actors stopped, leases
    released, the lake resumable); the CLI exits 143 rather than 130."""


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: end the command as Ctrl-C would (see Terminated)."""
    raise Terminated()
