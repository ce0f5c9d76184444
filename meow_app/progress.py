"""A training run's progress in words: step k of n and the time left, estimated from the
steps so far. The CLI's progress bar and the app's status line both read it from the
loop's step events (train.py), so they always agree."""

from __future__ import annotations

import time
from contextlib import contextmanager


def seconds_left(elapsed: float | None, done: int, total: int) -> float | None:
    """Time for the remaining steps at the mean pace so far (None before a step has ended).
    The pace includes what runs between steps (the early-stopping probes), so it is honest."""
    if elapsed is None or done < 1:
        return None
    return elapsed / done * max(total - done, 0)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def step_text(event: dict) -> str:
    """'step 3 of at most 12, about 40 s left' for a step event ({"step", "total_steps", "seconds"})."""
    k, n = event["step"], event["total_steps"]
    left = seconds_left(event.get("seconds"), k, n)
    when = "" if left is None else (", finishing" if k >= n else f", about {duration(left)} left")
    return f"step {k} of at most {n}{when}"


def bar(done: int, total: int, width: int = 20) -> str:
    filled = min(width, round(width * done / total)) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class Stages:
    """Named stages of a job, timed: `with stages("train"): ...` tells the listener the stage
    began (a {"type": "stage"} event) and records its seconds in `stages.seconds`."""

    def __init__(self, on_event=None):
        self.emit = on_event or (lambda event: None)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, key: str | None = None):
        self.emit({"type": "stage", "stage": name})
        start = time.perf_counter()
        yield
        self.seconds[key or name] = time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.seconds.items()}
