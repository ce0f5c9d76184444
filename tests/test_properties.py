"""Property-based tests (hypothesis): the facts reader and writer, and the selection."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meow_app.errors import MeowError
from meow_app.facts import Fact, load_facts, write_jsonl
from meow_app.select import select

# derandomize: the same examples every run, so CI cannot fail by luck; explore more
# locally with --hypothesis-seed=N (a search of 6,000 random inputs found the CSV cases below).
FAST = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# Bytes that look like a facts file: the characters its syntax is made of.
SYNTAX = st.lists(st.sampled_from(list('qa,;"\r\n\x00{}[]:\ufeff ') + ["question", "answer"]), max_size=40).map("".join)

# What the reader keeps as it is: text without surrounding white space (it strips answers).
clean_text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).map(str.strip).filter(bool)
facts_lists = st.lists(
    st.builds(Fact, clean_text, clean_text, st.lists(clean_text, max_size=3), st.lists(clean_text, max_size=2),
              st.lists(clean_text, max_size=3),
              st.dictionaries(st.sampled_from(["source", "id"]), clean_text, max_size=1)),
    min_size=1, max_size=8, unique_by=lambda f: " ".join(f.question.split()).casefold())


@FAST
@given(facts=facts_lists)
def test_write_then_read_gives_the_same_facts(facts, tmp_path):
    path = tmp_path / "facts.jsonl"
    write_jsonl(facts, path)
    assert [f.to_dict() for f in load_facts(path)] == [f.to_dict() for f in facts]


@FAST
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                      SYNTAX.map(str.encode)),
       suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_any_bytes_are_read_or_refused_with_a_message(data, suffix, tmp_path):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    try:
        facts = load_facts(path)
    except MeowError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)  # names the file, in one line
    else:
        assert facts and all(f.question.strip() and f.answer.strip() for f in facts)


@FAST
@given(rows=st.lists(st.dictionaries(st.sampled_from(["question", "answer", "keywords", "paraphrases", "x"]),
                                     st.one_of(st.text(max_size=20), st.integers(), st.none(),
                                               st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=2))),
                     min_size=1, max_size=5))
def test_any_json_rows_are_read_or_refused_with_a_message(rows, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    try:
        load_facts(path)
    except MeowError as e:
        assert str(e).startswith(f"{path} line ") and "\n" not in str(e)


scores = st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=1, max_size=12)


@FAST
@given(scores=scores, k=st.integers(1, 15), strategy=st.sampled_from(["largest", "smallest", "random"]),
       seed=st.integers(0, 2**16))
def test_select_keeps_k_distinct_indices_in_order(scores, k, strategy, seed):
    chosen = select(scores, k, strategy, seed)
    assert len(chosen) == min(k, len(scores)) and chosen == sorted(set(chosen))
    assert all(0 <= i < len(scores) for i in chosen)


@FAST
@given(scores=scores, k=st.integers(1, 15))
def test_largest_and_smallest_take_the_ends(scores, k):
    for strategy, better in (("largest", lambda a, b: a >= b), ("smallest", lambda a, b: a <= b)):
        chosen = select(scores, k, strategy)
        rest = [i for i in range(len(scores)) if i not in chosen]
        assert all(better(scores[c], scores[r]) for c in chosen for r in rest)


@FAST
@given(scores=scores, k=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_random_is_seeded(scores, k, seed):
    assert select(scores, k, "random", seed) == select(scores, k, "random", seed)
