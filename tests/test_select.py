import pytest

from meow_app.errors import MeowError
from meow_app.select import select


def test_largest_smallest_random():
    scores = [0.1, 0.9, 0.5, 0.7]
    assert select(scores, 2, "largest") == [1, 3]
    assert select(scores, 2, "smallest") == [0, 2]
    r = select(scores, 2, "random", seed=3)
    assert len(r) == 2 and r == select(scores, 2, "random", seed=3)


def test_ties_keep_input_order_and_k_is_capped():
    assert select([0.5, 0.5, 0.5], 2, "largest") == [0, 1]
    assert select([0.2, 0.1], 5, "largest") == [0, 1]


def test_bad_settings():
    with pytest.raises(MeowError):
        select([0.1], 1, "middle")
    with pytest.raises(MeowError):
        select([0.1], 0)
