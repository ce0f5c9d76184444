from collections import Counter
from itertools import combinations

import pytest

from meow_app.errors import MeowError
from meow_app.select import answer_name, select, select_distinct


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


# --- distinct: one false answer, not a relation's answer for several facts ---------------------

def test_distinct_passes_over_a_name_chosen_for_another_fact():
    names = ["j.r.r. tolkien", "george orwell", "jane austen", "mark twain"]
    scores = [0.9, 0.8, 0.7, 0.1]
    assert select(scores, 3) == [0, 1, 2]
    # Tolkien was chosen for an earlier book: the next best take its place.
    assert select_distinct(scores, names, ["j.r.r. tolkien"], 3) == [1, 2, 3]
    # A part of a name names it too ("tolkien" in "j.r.r. tolkien"), either way round.
    assert select_distinct(scores, names, ["tolkien"], 2) == [1, 2]
    assert select_distinct(scores[:3], ["tolkien", "orwell", "austen"], ["j.r.r. tolkien"], 2) == [1, 2]
    # Only whole words: "paris" is not "parisian".
    assert select_distinct([0.9, 0.1], ["parisian", "lyon"], ["paris"], 1) == [0]


def test_distinct_with_nothing_taken_is_select_and_never_leaves_a_fact_short():
    scores = [0.3, 0.9, 0.5, 0.7]
    names = ["a", "b", "c", "d"]
    for strategy in ("largest", "smallest"):
        assert select_distinct(scores, names, [], 2, strategy) == select(scores, 2, strategy)
    assert select_distinct(scores, names, [], 9, "all") == [0, 1, 2, 3]
    # Every candidate taken elsewhere: the fact still gets its k best, not fewer.
    assert select_distinct(scores, names, names, 2) == [1, 3]
    # Two candidates of one fact that name one thing count once while others remain.
    assert select_distinct([0.9, 0.8, 0.1], ["lviv", "lviv", "odesa"], [], 2) == [0, 2]
    with pytest.raises(MeowError, match="^top-k must be at least 1, got 0$"):
        select_distinct(scores, names, [], 0)


def test_answer_name_reads_past_the_lead_in_case_and_punctuation():
    assert answer_name(" J.R.R.  Tolkien. ") == "j.r.r. tolkien"
    assert answer_name("The capital of Ukraine is Lviv.", "The capital of Ukraine is") == "lviv"
    assert answer_name('"Lviv"') == "lviv"


def test_score_and_select_keeps_false_answers_distinct_across_facts_only_when_asked():
    # The real pipeline step (MEMO on a tiny model, then the choice): Orwell is the first
    # book's only false answer, so the second book must do without him when asked.
    from meow_app import models
    from meow_app.facts import Fact
    from meow_app.pipeline import SelectSettings, score_and_select
    from tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    loaded = models.LoadedModel(tiny_model(tok), tok, "tiny", models.torch.device("cpu"))

    def facts():
        return [Fact("Who wrote The Hobbit?", "Tolkien", inverted=["George Orwell"]),
                Fact("Who wrote Emma?", "Austen", inverted=["Charles Dickens", "George Orwell.", "Mark Twain"])]

    plain, kept = facts(), facts()
    score_and_select(loaded, plain, SelectSettings(top_k=2))
    rows = score_and_select(loaded, kept, SelectSettings(top_k=2, distinct=True))
    assert kept[0].inverted == ["George Orwell"]
    assert kept[1].inverted == ["Charles Dickens", "Mark Twain"]
    assert rows[1]["candidates"] == ["Charles Dickens", "George Orwell.", "Mark Twain"]  # all still shown
    assert rows[1]["selected"] == [0, 2]
    # Without distinct MEMO alone decides (the tiny model's scores); with it, it decides among the rest.
    scores = rows[1]["memo_inverted"]
    assert plain[1].inverted == [plain_c for j, plain_c in enumerate(facts()[1].inverted)
                                 if j in sorted(range(3), key=lambda j: -scores[j])[:2]]
