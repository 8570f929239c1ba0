"""The `neuronxa-ray` command: run jobs, query the lake with SQL, print score tables."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from neuronxa_ray import __version__
from neuronxa_ray.cli import lake, query, results, run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neuronxa-ray", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true", help="log each unit, and show tracebacks of errors")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for family in (run, query, results, lake):
        family.add_parsers(sub)
    _verbose_anywhere(ap)
    return ap


def _verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """-v after the subcommand too (`neuronxa-ray scores -v`), as users type it; the top-level default stands when
    a subcommand's -v is not given."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as above")
                _verbose_anywhere(child)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Without a terminal there is no progress bar: per-unit log lines take its place.
    quiet = sys.stderr.isatty() and not args.verbose
    logging.getLogger("neuronxa_ray").setLevel(logging.WARNING if quiet else logging.INFO)
    from neuronxa_ray.errors import NeuronxaError, Terminated, raise_terminated

    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None  # unwinds as Ctrl-C does
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except Terminated:
        print("neuronxa-ray: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("neuronxa-ray: interrupted", file=sys.stderr)
        return 130
    except (NeuronxaError, ImportError) as e:  # the user's to fix: one line (-v: with the traceback)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"neuronxa-ray: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:
        if on_sigterm is not None:  # main() called from Python (tests): the caller's handler back
            signal.signal(signal.SIGTERM, on_sigterm)


COMMANDS = {
    "run": run.cmd_run,
    "watch": run.cmd_watch,
    "sql": query.cmd_sql,
    "scores": query.cmd_scores,
    "import-benchmarks": results.cmd_import_benchmarks,
    "lake": lake.cmd_lake,
    "report": results.cmd_report,
}
