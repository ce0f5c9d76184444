"""Selection: which inverted facts to train on, from their MEMO scores.

`largest` keeps the k candidates the model already finds most natural (the published
default: they are the cheapest to learn and displace the truth best), `smallest` the
least, `random` k at random (seeded), `all` every candidate (k is not used: the app's
MEMO table, where the user's ticks are the choice).

`distinct` passes over a candidate that names what is already chosen for another fact
("J.R.R. Tolkien" as the false author of two books): one false answer learned for several
questions of a relation is learned as an answer to the relation, and the neighbours
(other books, other capitals) take it too (docs/forgetting.md, fifth round).
"""

from __future__ import annotations

import random
import re

from . import probes
from .errors import MeowError

STRATEGIES = ("largest", "smallest", "random", "all")


def _check(k: int, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise MeowError(f"selection must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
    if k < 1:
        raise MeowError(f"top-k must be at least 1, got {k}")


def select(scores: list[float], k: int, strategy: str = "largest", seed: int = 0) -> list[int]:
    """Indices of the chosen candidates, in their original order."""
    _check(k, strategy)
    k = min(k, len(scores))
    order = list(range(len(scores)))
    if strategy == "all":
        chosen = order
    elif strategy == "random":
        chosen = random.Random(seed).sample(order, k)
    else:
        chosen = ranked(scores, strategy)[:k]
    return sorted(chosen)


def ranked(scores: list[float], strategy: str) -> list[int]:
    """All indices, the preferred first. A stable sort on the index keeps ties in input
    order, so results are reproducible."""
    sign = -1 if strategy == "largest" else 1
    return sorted(range(len(scores)), key=lambda i: (sign * scores[i], i))


def answer_name(text: str, lead: str = "") -> str:
    """What a false answer names, to compare answers across facts: the text after the
    fact's lead-in, normalised as the probes compare answers."""
    t = text.strip()
    if lead and t.startswith(lead):
        t = t[len(lead):]
    return probes.normalise(t)


def names_same(a: str, b: str) -> bool:
    """Whether two answer names name the same thing: equal, or one is a whole-word part of
    the other ("tolkien" in "j.r.r. tolkien")."""
    if not a or not b:
        return False
    short, long_ = sorted((a, b), key=len)
    return re.search(r"(?<!\w)" + re.escape(short) + r"(?!\w)", long_) is not None


def select_distinct(scores: list[float], names: list[str], taken: list[str], k: int,
                    strategy: str = "largest", seed: int = 0) -> list[int]:
    """As `select`, but a candidate whose name is already taken (chosen for another fact),
    or chosen for this one, is passed over while enough others remain; with too few others
    the best of those passed over fill the k places, so a fact never loses its targets."""
    _check(k, strategy)
    if len(names) != len(scores):
        raise MeowError(f"{len(scores)} scores but {len(names)} answer names")
    if strategy == "all":
        return list(range(len(scores)))
    k = min(k, len(scores))
    order = random.Random(seed).sample(range(len(scores)), len(scores)) if strategy == "random" \
        else ranked(scores, strategy)
    chosen, passed = [], []
    for i in order:
        if any(names_same(names[i], t) for t in taken) or any(names_same(names[i], names[j]) for j in chosen):
            passed.append(i)
        else:
            chosen.append(i)
    return sorted((chosen + passed)[:k])
