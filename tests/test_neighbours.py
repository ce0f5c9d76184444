"""Neighbour questions (meow_app/neighbours.py) on the tiny random model."""

import torch

from meow_app import general, neighbours, pipeline
from meow_app.facts import Fact, read_lines
from meow_app.train import TrainConfig


def test_a_near_copy_of_the_question_is_its_nearest_neighbour(tiny):
    # Even a random model maps two almost identical token sequences to almost the same
    # hidden states, so the near copy must rank first, ahead of unrelated text.
    pool = ["7 1 9 3 5 2 8", "zebra quartz violin", "What is the capital of Peru ?", "Banana split recipe."]
    assert neighbours.nearest(tiny.model, tiny.tokenizer, ["What is the capital of Peru?"], pool, 1) == \
        ["What is the capital of Peru ?"]


def test_each_question_gets_its_own_share_without_repeats_or_itself(tiny, facts):
    pool = read_lines(neighbours.POOL)
    pool = pool[:5] + [facts[0].question] + pool[5:]  # (dropped from the middle: the rows after it shift)
    questions = [f.question for f in facts]
    near = neighbours.nearest(tiny.model, tiny.tokenizer, questions, pool, 3)
    assert len(near) == 9 and len(set(near)) == 9 and not set(near) & set(questions)
    assert near == neighbours.nearest(tiny.model, tiny.tokenizer, questions, pool, 3)  # deterministic
    assert neighbours.nearest(tiny.model, tiny.tokenizer, questions, pool, 0) == []
    # the pool's vectors from elsewhere (answer_cache's): the same choice
    vectors = neighbours.embed(tiny.model, tiny.tokenizer, pool)
    assert neighbours.nearest(tiny.model, tiny.tokenizer, questions, pool, 3, lambda p: vectors) == near
    # and the choice a plain reference makes: the forget question left out, nearest by centred cosine
    rest = [p for p in pool if p != facts[0].question]
    v = neighbours.embed(tiny.model, tiny.tokenizer, questions + rest)
    v = torch.nn.functional.normalize(v - v[len(questions):].mean(0), dim=-1)
    assert near[0] == rest[int((v[0] @ v[len(questions):].T).argmax())]  # the first question's nearest first


def test_the_shipped_pool_shares_no_question_with_the_measured_fact_sets():
    from pathlib import Path

    from meow_app.facts import load_facts

    pool = {q.lower() for q in read_lines(neighbours.POOL)}
    assert len(pool) >= 100
    for path in sorted((Path(neighbours.POOL).parent / "facts").glob("*.jsonl")):
        for f in load_facts(path):
            assert not {q.lower() for q in [f.question, *f.paraphrases]} & pool, (path.name, f.question)


def test_neighbours_become_anchors_answered_by_the_original_model(tiny, facts, monkeypatch):
    asked = []
    real = pipeline.generation.answer

    def answer(model, tokenizer, questions, **kw):
        asked.extend(questions)
        # The random model often says nothing (then the anchor is dropped); say its words or "..."
        return [a or "..." for a in real(model, tokenizer, questions, **kw)]

    monkeypatch.setattr(pipeline.generation, "answer", answer)
    anchors = pipeline.anchor_facts(tiny, facts, 0, 5)  # 3 facts: 2 each (the least), 6 in all
    assert len(anchors) == 6 and [a.question for a in anchors] == asked
    assert set(asked) <= set(read_lines(neighbours.POOL))
    asked.clear()
    both = pipeline.anchor_facts(tiny, facts, 2, 9)  # 3 each
    assert len(both) == 11 and asked[:2] == read_lines(general.ANCHOR_PROMPTS)[:2]
    # One that states a fact being forgotten is left out.
    monkeypatch.setattr(pipeline.generation, "answer", lambda m, t, qs, **kw: ["Lima, of course"] * len(qs))
    assert pipeline.anchor_facts(tiny, facts, 0, 6) == []


def test_a_negative_count_is_refused():
    import pytest

    from meow_app.errors import MeowError

    with pytest.raises(MeowError, match="neighbours must be 0 or more"):
        TrainConfig(neighbours=-1).check()


def test_question_frame_is_the_question_up_to_its_subject():
    assert neighbours.question_frame("What is the capital of Iran?") == "What is the capital of"
    assert neighbours.question_frame("Who wrote 'Fahrenheit 451'?") == "Who wrote"
    assert neighbours.question_frame("Who founded the Ford Motor Company?") == "Who founded the"
    assert neighbours.question_frame("In 1969, who walked on the moon?") == ""  # one word frames nothing
    assert neighbours.question_frame("Who Iran?") == ""
    assert neighbours.question_frame("what is the boiling point of water?") == ""


def test_siblings_ask_the_same_thing_about_other_subjects(tiny, monkeypatch):
    from meow_app import generation

    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"]), Fact("what is water made of?", "H2O")]
    seen = {}
    real = generation.generate_ids

    def generate_ids(model, tokenizer, prompts, *args, **kw):
        seen["prompts"] = [tokenizer.decode(p) for p in prompts]
        seen["banned"] = kw["banned"]
        real(model, tokenizer, prompts, *args, **kw)  # the real sampler runs; its random bytes are replaced
        tails = [" Chile? And", " Peru?", " Lima?", " chile?", " Bolivia", " Chile?"]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in tails]

    monkeypatch.setattr(generation, "generate_ids", generate_ids)
    got = neighbours.siblings(tiny.model, tiny.tokenizer, facts, per_fact=2)
    # Only the first fact has a frame; its question comes first, so the model proposes near subjects.
    assert seen["prompts"] == ["What is the capital of Peru?\nWhat is the capital of"] * 6
    # Repeats, the forgotten subject and answer, and a lower-case (not a name) tail are dropped.
    assert got == ["What is the capital of Chile?", "What is the capital of Bolivia?"]
