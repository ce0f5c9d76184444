from collections import Counter
from itertools import combinations

import pytest

from meow_app.errors import MeowError
from meow_app.select import select


def test_largest_smallest_random():
    scores = [0.1, 0.9, 0.5, 0.7]
    assert select(scores, 2, "largest") == [1, 3]
    assert select(scores, 2, "smallest") == [0, 2]
    r = select(scores, 2, "random", seed=3)
    assert len(r) == 2 and r == select(scores, 2, "random", seed=3)


def test_random_follows_the_seed_and_ignores_the_scores():
    # A strategy that ignored the seed (or took the ends of the scores, or the first k)
    # would give one pair for every seed; a seeded uniform draw gives every pair of 6,
    # and each index about as often as the others (k/n of 300 draws = 100).
    scores = [0.1, 0.9, 0.5, 0.7, 0.3, 0.2]
    picks = [tuple(select(scores, 2, "random", seed=s)) for s in range(300)]
    assert set(picks) == set(combinations(range(6), 2))
    counts = Counter(i for p in picks for i in p)
    assert all(70 <= counts[i] <= 130 for i in range(6)), counts
    assert select(scores, 2, "random", seed=5) == select(list(reversed(scores)), 2, "random", seed=5)


def test_ties_keep_input_order_and_k_is_capped():
    assert select([0.5, 0.5, 0.5], 2, "largest") == [0, 1]
    assert select([0.2, 0.1], 5, "largest") == [0, 1]


def test_bad_settings():
    with pytest.raises(MeowError, match="^selection must be one of largest, smallest, random, all, got 'middle'$"):
        select([0.1], 1, "middle")
    with pytest.raises(MeowError, match="^top-k must be at least 1, got 0$"):
        select([0.1], 0)
