"""Arguments every command family shares: the lake, job overrides, typed values (language codes, seconds, names),
and checks of output paths and lakes made before any work starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def lake_arg(p: argparse.ArgumentParser) -> None:
    # an empty value (an unset $LAKE) is refused, not taken for ./lake: `lake check --repair` would act on another lake
    p.add_argument(
        "--lake", type=name_arg, default=None, help="lake directory or URI (s3://, gs://, az://; default ./lake)"
    )


def codes(text: str) -> list[str]:
    """A comma-separated list of language codes (one option value, so it cannot swallow the job file)."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected language codes such as fra,deu")
    return codes


def seconds(minimum: float, strict: bool):
    """An argparse type: a number of seconds > minimum (strict) or >= minimum."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if value != value or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'>' if strict else '>='} {minimum:g} seconds")
        return value

    return parse


def whole(minimum: int):
    """An argparse type: a whole number >= minimum (checked here, so that the error names the option, not the job
    file whose value it replaces)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def name_arg(text: str) -> str:
    """A non-empty name (an empty --model would be stored as a model no score has)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the option out instead)")
    return text


def job_overrides(p: argparse.ArgumentParser) -> None:
    lake_arg(p)
    p.add_argument(
        "--languages", type=codes, action="extend", metavar="L1,L2", help="override the job's languages (fra,deu)"
    )
    p.add_argument("--n-sentences", type=whole(2), help="override the job's n_sentences")
    p.add_argument("--num-actors", type=whole(1), help="override the number of extractor actors")
    p.add_argument("--batch-size", type=whole(1), help="override the batch size (sentences)")
    p.add_argument("--device", help="override the device (auto, cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_output(path: str, flag: str, directory: bool = False, example: str = "out") -> None:
    """An output path the command can write, before any work: a file (or, for `directory`, a folder) whose
    nearest existing parent is a folder."""
    from neuronxa_ray.errors import NeuronxaError

    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise NeuronxaError(f"{flag} {path!r} is a file, not a directory (name a directory to write figures into)")
    if not directory and p.is_dir():
        raise NeuronxaError(f"{flag} {path!r} is a directory: name a file to write (such as {str(p / example)!r})")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NeuronxaError(f"{flag} {path!r}: {str(parent)!r} is a file, not a directory")
            break


def lake_dir(args) -> str:
    return args.lake or "lake"


def check_lake(path: str) -> None:
    from neuronxa_ray.errors import NeuronxaError
    from neuronxa_ray.lake import Lake

    lake = Lake(path)
    if lake.storage.is_local and Path(lake.uri).is_file():
        raise NeuronxaError(f"lake {path!r} is a file, not a lake directory (pass --lake DIR)")
    if not lake.exists():
        raise NeuronxaError(f"lake {path!r} does not exist (run a job first, or pass --lake DIR)")
