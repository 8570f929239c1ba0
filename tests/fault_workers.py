"""Workers for scheduling and fault tests: the real LanguageWorker, slowed down and announcing where it runs, so a
test can remove the node or kill the process of an actor in the middle of a language. Built by a function, so Ray
ships the class by value to actors that cannot import this test module."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from neuronxa_ray.worker.worker import LanguageWorker


def slow_worker(signal_dir: str, delay_s: float, fail_langs: tuple[str, ...] = ()):
    """A LanguageWorker that writes {node_id, pid, lang} to signal_dir when a language starts, then sleeps delay_s.
    Languages in fail_langs raise inside the actor, as a language whose data breaks the model would."""

    class SlowWorker(LanguageWorker):
        def process(self, task, pivot=None, **kwargs):
            import ray

            info = {
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "checkpoint": task.checkpoint,
                "lang": task.lang,
            }
            name = f"{task.checkpoint}-{task.lang}-{uuid.uuid4().hex[:8]}.json"
            Path(signal_dir, name).write_text(json.dumps(info))
            if task.lang in fail_langs:
                raise ValueError(f"language {task.lang!r}: sentence 3 has a token the model cannot embed")
            time.sleep(delay_s)
            return super().process(task, pivot, **kwargs)

    return SlowWorker


def signals(signal_dir: str) -> list[dict]:
    out = []
    for p in sorted(Path(signal_dir).glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:  # being written
            continue
    return out


def wait_for(predicate, timeout_s: float = 120.0, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError("condition not met in time")


def cut_write_worker(flag: str, lake: str, lang: str):
    """A LanguageWorker whose actor process dies on its first try at `lang` in the middle of writing that language's
    neuron counts, as a lost node cuts a write: the atomic writer's temporary file is left beside the target."""

    class CutWrite(LanguageWorker):
        def process(self, task, *args, **kwargs):
            from neuronxa_ray.lake.layout import language_file

            if task.lang == lang and not Path(flag).exists():
                Path(flag).touch()
                target = Path(lake) / language_file("neuron_counts", task.model_name, task.checkpoint, lang)
                target.parent.mkdir(parents=True, exist_ok=True)
                Path(target.parent, f".{target.name}.{uuid.uuid4().hex}.tmp").write_bytes(b"PAR1 cut short")
                os._exit(1)
            return super().process(task, *args, **kwargs)

    return CutWrite


class _Nap:
    """Unpickled as a pause: time.sleep(seconds), in whichever process loads it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        return (time.sleep, (self.seconds,))


def slow_start_worker(seconds: float):
    """A LanguageWorker whose actor takes `seconds` longer to start, as on a busy machine: the actor has its place
    (a worker process) and is still loading its arguments when the placement limit passes."""

    class SlowStart(LanguageWorker):
        nap = _Nap(seconds)  # a class attribute: unpickled (slept) when the actor receives its worker factory

    return SlowStart
