"""Selection: which inverted facts to train on, from their MEMO scores.

`largest` keeps the k candidates the model already finds most natural (the published
default: they are the cheapest to learn and displace the truth best), `smallest` the
least, `random` k at random (seeded), `all` every candidate (k is not used: the app's
MEMO table, where the user's ticks are the choice).
"""

from __future__ import annotations

import random

from .errors import MeowError

STRATEGIES = ("largest", "smallest", "random", "all")


def select(scores: list[float], k: int, strategy: str = "largest", seed: int = 0) -> list[int]:
    """Indices of the chosen candidates, in their original order."""
    if strategy not in STRATEGIES:
        raise MeowError(f"selection must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
    if k < 1:
        raise MeowError(f"top-k must be at least 1, got {k}")
    k = min(k, len(scores))
    order = list(range(len(scores)))
    if strategy == "all":
        chosen = order
    elif strategy == "random":
        chosen = random.Random(seed).sample(order, k)
    else:
        # A stable sort on the index keeps ties in input order, so results are reproducible.
        sign = -1 if strategy == "largest" else 1
        chosen = sorted(order, key=lambda i: (sign * scores[i], i))[:k]
    return sorted(chosen)
