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


def test_question_parts_find_the_subject_and_the_words_after_it():
    parts = neighbours.question_parts
    assert parts("Which sport is Serena Williams famous for?") == ("Which sport is", "Serena Williams", "famous for")
    assert parts("In which month is Earth Day celebrated?") == ("In which month is", "Earth Day", "celebrated")
    assert parts("What is the main ingredient of hummus?") == ("What is the main ingredient of", "hummus", "")
    assert parts("Who wrote 'Lord of the Flies'?") == ("Who wrote", "'Lord of the Flies'", "")
    assert parts("Who founded the Ford Motor Company?") == ("Who founded the", "Ford Motor Company", "")
    assert parts("Who painted the Mona Lisa?") == ("Who painted the", "Mona Lisa", "")
    assert parts("Who was Leonardo da Vinci's teacher?") == ("Who was", "Leonardo da Vinci's", "teacher")
    assert parts("Who is the head of state of the United Kingdom?") == ("Who is the head of state of the",
                                                                        "United Kingdom", "")
    assert parts("Where is the Bank of the Republic of Ireland?") == ("Where is the",
                                                                     "Bank of the Republic of Ireland", "")
    # a lower-case subject between do-support and the verb at the end
    assert parts("Which part of the body does a dermatologist treat?") == \
        ("Which part of the body does a", "dermatologist", "treat")
    assert parts("What does a caterpillar turn into?") == ("What does a", "caterpillar", "turn into")
    assert parts("What does a cat eat for breakfast?") == ("What does a", "cat", "eat for breakfast")
    assert parts("Which organ does a cardiologist specialise in?") == \
        ("Which organ does a", "cardiologist", "specialise in")
    assert parts("Who Iran?") == ("", "", "")                      # one word frames nothing
    assert parts("In 1969, who walked on the moon?") == ("", "", "")
    assert parts("what is water made of?") == ("", "", "")         # nothing after the last preposition
    # Where the question has a frame, question_frame (used elsewhere) agrees with it.
    for q in ("What is the capital of Iran?", "Who wrote 'Fahrenheit 451'?", "Who founded the Ford Motor Company?"):
        assert neighbours.question_parts(q)[0] == neighbours.question_frame(q)


def test_a_bare_subject_is_said_without_quotes_possessive_or_article():
    bare = neighbours.bare_subject
    assert bare("Pyotr Tchaikovsky's") == "Pyotr Tchaikovsky"
    assert bare("Charles Dickens’s") == "Charles Dickens"
    assert bare("'Fahrenheit 451'") == "Fahrenheit 451"
    assert bare("the world") == "world"
    assert bare("Mona Lisa") == "Mona Lisa"
    assert neighbours.names_any("What is water made of?", ["water"])
    assert not neighbours.names_any("Where is the tallest waterfall?", ["water"])


def test_a_sampled_subject_is_cut_where_the_question_goes_on():
    got = neighbours.sampled_subject
    assert got(" Roger Federer famous for? And", "Serena Williams", "famous for") == "Roger Federer"
    assert got(" Valentine's Day night celebrated?", "Halloween", "night celebrated") == "Valentine's Day"
    assert got(" Tiger Woods most famous for?", "Serena Williams", "famous for") == "Tiger Woods"  # (its name only)
    assert got(" roger federer famous for?", "Serena Williams", "famous for") == ""  # not a name for a name
    assert got(" Us@b2b famous for?", "Usain Bolt", "famous for") == ""             # not a name at all
    assert got(" “Hamlet”?", "“Macbeth”", "") == "“Hamlet”"                         # curly quotes are quotes
    assert got(" falafel?", "hummus", "") == "falafel"
    assert got(" brie cheese?\nWhat", "hummus", "") == "brie cheese"
    assert got(" a dish that people in the Middle East like to eat", "hummus", "") == ""  # too long


def test_siblings_keep_the_words_after_the_subject(tiny, monkeypatch):
    from meow_app import generation

    facts = [Fact("Which sport is Serena Williams famous for?", "Tennis", ["tennis"]),
             Fact("What is the main ingredient of hummus?", "Chickpeas", ["chickpea"])]
    seen = {}

    def generate_ids(model, tokenizer, prompts, *args, **kw):
        seen["prompts"] = [tokenizer.decode(p) for p in prompts]
        tails = [" Roger Federer famous for?", " Serena Williams famous for?", " roger famous for?", " Tiger Woods?",
                 " Roger Federer famous?", " Tennis Star?",
                 " falafel?", " chickpeas?", " tahini?", " tahini?", " Kimchi?", " x?"]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in tails]

    monkeypatch.setattr(generation, "generate_ids", generate_ids)
    got = neighbours.sibling_questions(tiny.model, tiny.tokenizer, facts, per_fact=2)
    assert seen["prompts"][0] == "Which sport is Serena Williams famous for?\nWhich sport is"
    assert seen["prompts"][6] == "What is the main ingredient of hummus?\nWhat is the main ingredient of"
    # The subject, the truth and repeats are dropped; the question's own ending is kept.
    assert got == [["Which sport is Roger Federer famous for?", "Which sport is Tiger Woods famous for?"],
                   ["What is the main ingredient of falafel?", "What is the main ingredient of tahini?"]]


def test_siblings_from_worked_examples_forbid_respelling_the_subject(tiny, monkeypatch):
    from meow_app import generation, invert

    facts = [Fact("Which sport is Serena Williams famous for?", "Tennis", ["tennis"])]
    seen = {}

    def generate_ids(model, tokenizer, prompts, *args, **kw):
        seen["prompts"], seen["banned"] = [tokenizer.decode(p) for p in prompts], kw["banned"]
        tails = [" Roger Federer famous for?"] * len(prompts)
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in tails]

    monkeypatch.setattr(generation, "generate_ids", generate_ids)
    # (the tiny tokenizer's pieces are too short for truth_token_ids: a stand-in id for the truth)
    monkeypatch.setattr(invert, "truth_token_ids", lambda tokenizer, fact: [7])
    plain = neighbours.sibling_questions(tiny.model, tiny.tokenizer, facts, per_fact=1)
    plain_banned = set(seen["banned"][0])
    assert plain_banned == {7}
    got = neighbours.sibling_questions(tiny.model, tiny.tokenizer, facts, per_fact=1, shots=True)
    assert got == plain == [["Which sport is Roger Federer famous for?"]]
    assert seen["prompts"][0] == neighbours.SHOTS + ("Question: Which sport is Serena Williams famous for?\n"
                                                    "The same question about another subject: Which sport is")
    # The truth stays forbidden, and so is every token that starts "Serena" or "Williams".
    assert set(seen["banned"][0]) == {7} | set(neighbours.word_start_ids(tiny.tokenizer, ["Serena", "Williams"]))
    asked = []
    monkeypatch.setattr(neighbours, "word_start_ids", lambda tokenizer, words: asked.append(words) or [11, 12])
    neighbours.sibling_questions(tiny.model, tiny.tokenizer, facts, per_fact=1, shots=True)
    assert asked == [["Serena", "Williams"]] and set(seen["banned"][0]) == {7, 11, 12}


class _Vocab:
    """A tokenizer whose every string in `vocab` is one token (and anything else several)."""

    def __init__(self, vocab):
        self.vocab = {v: i for i, v in enumerate(vocab)}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[text]] if text in self.vocab else [-1, -2]}


def test_word_starts_are_the_tokens_that_begin_a_subjects_words_but_small_words_and_numbers():
    vocab = ["Ser", " Ser", " ser", " Will", "Will", " will", " Williams", " S", "S", " of", " and", "4", "45", " Lord",
             " Fl", " fl", " Is", " is", "Israel", " Le", " le", " tor", " To", " to", " LeBron", " Romeo", " ro", " a",
             " Jul"]
    tok = _Vocab(vocab)
    got = lambda words: {vocab[i] for i in neighbours.word_start_ids(tok, words)}  # noqa: E731
    # As written, after a space, and after a space in lower case; one letter is too little to tell.
    assert got(["Serena", "Williams"]) == {"Ser", " Ser", " ser", " Will", "Will", " will", " Williams"}
    # Small words inside a name and numbers stay allowed ("Antony and Cleopatra", "1984").
    assert got(["Lord", "of", "the", "Flies"]) == {" Lord", " Fl", " fl"}
    assert got(["Fahrenheit", "451"]) == set()
    assert got(["Romeo", "and", "Juliet"]) == {" Romeo", " ro", " Jul"}
    # A start that is a common word is allowed in lower case, not as written.
    assert got(["Israel"]) == {" Is", "Israel"} and got(["Toronto"]) == {" To", " tor"}
    assert got(["LeBron"]) == {" Le", " LeBron"}


def test_sibling_shots_reach_the_siblings_from_the_training_settings(tiny, facts, monkeypatch):
    asked = []
    monkeypatch.setattr(pipeline.neighbours_mod, "siblings", lambda *a, **kw: asked.append(kw.get("shots")) or [])
    pipeline.training_inputs(tiny, facts, None, TrainConfig(siblings=2, sibling_shots=True, own_answers=False), {})
    pipeline.training_inputs(tiny, facts, None, TrainConfig(siblings=2, own_answers=False), {})
    assert asked == [True, False]


def test_sibling_sentences_end_the_siblings_answers_and_leave_the_shipped_ones_whole(tiny, facts, monkeypatch):
    def answer(model, tokenizer, questions, done=None, **kw):
        """Each answer three sentences long; `done` asked at each sentence's end, as generation.answer does."""
        out = []
        for i, _ in enumerate(questions):
            text = ""
            for sentence in ("One.", " Two.", " Three."):
                text += sentence
                if done and done(i, text.strip()):
                    break
            out.append(text.strip())
        return out

    monkeypatch.setattr(pipeline.generation, "answer", answer)
    monkeypatch.setattr(pipeline.neighbours_mod, "siblings", lambda *a, **kw: ["What is the capital of Zorkland?"])
    for sentences, said in ((0, "One. Two. Three."), (1, "One."), (2, "One. Two.")):
        anchors = pipeline.training_inputs(tiny, facts, None, TrainConfig(anchors=2, siblings=1, own_answers=False,
                                                                          sibling_sentences=sentences), {})[2]
        assert [a.answer for a in anchors] == ["One. Two. Three."] * 2 + [said]  # (the shipped prompts first)
        assert [bool(a.extra.get("shipped")) for a in anchors] == [True, True, False]


def test_shipped_questions_left_out_for_naming_a_forgotten_fact_are_told_to_the_cache(tiny, facts, tmp_path,
                                                                                      monkeypatch):
    from meow_app.answer_cache import AnswerCache

    monkeypatch.setattr(pipeline.generation, "answer", lambda m, t, qs, *a, **kw: ["Lima, of course"] * len(qs))
    monkeypatch.setattr(pipeline.neighbours_mod, "siblings", lambda *a, **kw: ["What is the capital of Zorkland?"])
    cache = AnswerCache(tmp_path / "a.json", tiny.model)
    assert pipeline.anchor_facts(tiny, facts, 2, 6, siblings=1, cache=cache) == []
    # The 2 general prompts and 6 neighbour questions, not the sibling (made from the user's question).
    assert len(cache.left_out) == 8 and all(a == "Lima, of course" for _, a in cache.left_out)
    assert "What is the capital of Zorkland?" not in [q for q, _ in cache.left_out]
