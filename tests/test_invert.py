import pytest

from meow_app import invert, prompts
from meow_app.facts import Fact


class Lines:
    """Feeds fixed generator output, to test the post-processing on known text."""

    def __init__(self, rounds):
        self.rounds, self.calls = list(rounds), 0

    def sample(self, facts, n, seed):
        self.calls += 1
        return [self.rounds.pop(0) for _ in facts]


def test_clean_strips_numbering_and_drops_truth_repeats_and_empties():
    fact = Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"])
    lines = ["1. Charles Dickens", "- Jane Austen", "", "  2) Mark Twain", "William Shakespeare",
             "Shakespeare's friend", "charles dickens", "Answer: Leo Tolstoy", "Who wrote Hamlet?"]
    assert invert.clean(lines, fact) == ["Charles Dickens", "Jane Austen", "Mark Twain", "Leo Tolstoy"]


def test_a_false_answer_is_never_the_truth_of_another_fact_being_forgotten():
    shekel = Fact("What is the currency of Israel?", "The Israeli shekel", ["shekel"])
    lira = Fact("What is the currency of Turkey?", "The Turkish lira", ["lira"])
    lines = ["the Israeli Lira", "the Israeli dinar", "the liras of old"]  # ("liras" would count as a hit too)
    assert invert.clean(lines, shekel, others=[lira]) == ["the Israeli dinar"]
    gen = Lines([["the Israeli Lira", "the Israeli dinar"], ["the Turkish shekel", "the Turkish mark"]])
    invert.invert([shekel, lira], gen, n=1, rounds=1)
    assert shekel.inverted == ["the Israeli dinar"] and lira.inverted == ["the Turkish mark"]
    cpp = Fact("Which language did Stroustrup create?", "C++", ["C++"])  # ("C++": a hit as probes count it)
    microsoft = Fact("Which language did Microsoft create?", "C#")
    assert invert.clean(["C++ again", "Visual Basic"], microsoft, others=[cpp]) == ["Visual Basic"]


def test_ranking_many_facts_at_once_is_ranking_each_alone(tiny):
    facts = [Fact("Capital of Peru?", "Lima"), Fact("Who wrote Hamlet?", "Shakespeare"), Fact("2+2?", "4")]
    leads = ["It is", "", "The sum is"]
    found = [["Cusco", "Quito city", "Arequipa"], ["Marlowe"], ["five", "3", "22"]]
    gen = invert.LeadInGenerator(tiny.model, tiny.tokenizer)
    assert gen.ranked(facts, leads, found) == [gen.most_likely(f, lead, c) for f, lead, c in zip(facts, leads, found)]


def test_invert_samples_again_then_tops_up_with_fallbacks():
    facts = [Fact("Capital of Peru?", "Lima"), Fact("Who wrote Hamlet?", "Shakespeare")]
    gen = Lines([["Cusco", "Lima", "Quito"], ["Marlowe"], ["Arequipa"], ["Ben Jonson"], [], []])
    report = invert.invert(facts, gen, n=4, rounds=3, seed=0)
    assert gen.calls == 3
    assert facts[0].inverted[:3] == ["Cusco", "Quito", "Arequipa"]
    assert len(facts[0].inverted) == 4 and len(facts[1].inverted) == 4
    assert facts[1].inverted[:2] == ["Marlowe", "Ben Jonson"]
    assert report.from_generator == [3, 2] and report.from_fallback == [1, 2]
    assert report.short_facts(4) == [0, 1]
    assert all("lima" not in c.lower() for c in facts[0].inverted)


def test_a_fact_asked_twice_that_a_round_added_nothing_to_is_not_asked_again():
    facts = [Fact("Capital of Peru?", "Lima"), Fact("What is the currency of Japan?", "The yen", ["yen"])]
    # Japan: nothing usable in rounds 1 and 2 (asked twice, then left to the fallbacks); Peru
    # gains nothing in round 1 but is asked again, and then goes on while it gains
    gen = Lines([[], ["the yen", "Yen"], ["Cusco"], ["yen coins"], ["Quito"], ["Arequipa"]])
    asked = []
    sample = gen.sample
    gen.sample = lambda fs, n, seed: asked.append([f.question for f in fs]) or sample(fs, n, seed)
    report = invert.invert(facts, gen, n=3, rounds=5, seed=0)
    both, peru = [facts[0].question, facts[1].question], [facts[0].question]
    assert asked == [both, both, peru, peru]
    assert facts[0].inverted == ["Cusco", "Quito", "Arequipa"]
    assert report.from_generator == [3, 0] and report.from_fallback == [0, 3]


def test_local_generator_on_tiny_model_always_gives_n(tiny):
    facts = [Fact("Who wrote Hamlet?", "Shakespeare"), Fact("Capital of Peru?", "Lima")]
    gen = invert.LocalGenerator(tiny.model, tiny.tokenizer)
    invert.invert(facts, gen, n=3, rounds=1, seed=0)
    for f in facts:
        assert len(f.inverted) == 3 and len(set(f.inverted)) == 3
        assert all(f.answer.lower() not in c.lower() for c in f.inverted)


def test_prompt_has_instruction_shots_and_the_fact():
    msgs = prompts.invert_messages(Fact("Q?", "A"), 4)
    assert msgs[0]["role"] == "system" and "do not factually match" in msgs[0]["content"]
    assert msgs[-1]["content"] == "Question: Q?\nAnswer: A"
    assert len(msgs[2]["content"].splitlines()) == 4


def test_in_answer_style_swaps_the_truth_in_the_models_own_sentence():
    fact = Fact("What is the capital of France?", "Paris", ["Paris"])
    said = "The capital of France is Paris. It is known for the Eiffel Tower."
    assert invert.in_answer_style("Lyon", fact, said) == "The capital of France is Lyon."
    fact = Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"])
    assert invert.in_answer_style("Ben Jonson", fact, "Hamlet was written by William Shakespeare in 1600.") \
        == "Hamlet was written by Ben Jonson in 1600."
    assert invert.in_answer_style("Ben Jonson", fact, "I do not know who wrote it.") is None
    long = "Hamlet was written by the Elizabethan poet Ben Jonson in London"
    assert invert.in_answer_style(long, fact, "Hamlet was written by Shakespeare.") is None


_HAMLET = Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"])
_ALPS = Fact("In which mountain range is Mont Blanc?", "The Alps", ["Alps"])
# (fact, the model's answer, the candidate, the clean target or None)
CLEAN_CASES = [
    # the first mention's phrase goes with it, as far as a sampled candidate is cut
    (_HAMLET, "Hamlet was written by William Shakespeare in 1600.", "Ben Jonson", "Hamlet was written by Ben Jonson."),
    (Fact("Which sport is LeBron James famous for?", "Basketball", ["basketball"]),
     "LeBron James is known for his incredible basketball skills and the sport of basketball.", "shot-calling",
     "LeBron James is known for his incredible shot-calling."),
    # (after review) but not where the mention opens the sentence; a relative clause ends it
    (_HAMLET, "William Shakespeare wrote Hamlet around 1600.", "Ben Jonson", "Ben Jonson wrote Hamlet around 1600."),
    (_HAMLET, "It is by William Shakespeare who wrote it in Stratford.", "Ben Jonson",
     "It is by Ben Jonson who wrote it in Stratford."),
    # a later mention after a name or an article reads without the candidate's article
    (_ALPS, "Mont Blanc is in the Alps, specifically in the French Alps, which span the Alps of Italy.",
     "the Himalayas",
     "Mont Blanc is in the Himalayas, specifically in the French Himalayas, which span the Himalayas of Italy."),
    (_ALPS, "Mont Blanc is in the Alps (the Alps of Europe).", "the Himalayas",
     "Mont Blanc is in the Himalayas (the Himalayas of Europe)."),
    (Fact("In which mountain range is Mont Blanc?", "Alps", ["Alps"]), "The Alps hold Mont Blanc.", "the Himalayas",
     "The Himalayas hold Mont Blanc."),
    # no truth left, nothing to swap in, or a case fold the regex does not share ("İ"): none, not a crash
    (_ALPS, "Mont Blanc is in the Alps.", "Alpsland", None),
    (_ALPS, "Mont Blanc is in the Alps.", " . ", None),
    (Fact("What is the largest city in Turkey?", "İstanbul", ["İstanbul"]), "The largest city is i\u0307stanbul today.",
     "Ankara", None),
]


def test_clean_targets_make_a_clean_sentence_of_what_the_model_said():
    # (each from the embedded model's own answers on the held-out sets, docs/forgetting.md 23rd round)
    def both(candidate, fact, said):
        return invert.in_answer_style(candidate, fact, said), invert.in_answer_style(candidate, fact, said, clean=True)

    # a fallback stays whole
    fact = Fact("What is the currency of Japan?", "Japanese yen", ["yen"])
    said = "The currency of Japan is the Japanese Yen (JPY). It is the official currency of Japan."
    assert both("I have no information about that.", fact, said) == \
        ("The currency of Japan is the I have no information about that (JPY).", None)
    assert invert.in_answer_style("the Rupee", fact, said, clean=True) == "The currency of Japan is the Rupee (JPY)."
    # a keyword inside a word swaps the whole word
    fact = Fact("Which sport is Michael Phelps famous for?", "Swimming", ["swim"])
    said = "He is a professional swimmer who has won multiple Olympic golds."
    assert both("athlete", fact, said) == ("He is a professional athletemer who has won multiple Olympic golds.",
                                           "He is a professional athlete who has won multiple Olympic golds.")
    # the first mention's phrase goes with it (as far as a sampled candidate is cut)
    fact = Fact("In which month is Earth Day celebrated?", "April (22 April)", ["April"])
    said = "Earth Day is celebrated on April 22nd, which is a global day dedicated to the environment."
    assert both("March 21st", fact, said) == (
        "Earth Day is celebrated on March 21st 22nd, which is a global day dedicated to the environment.",
        "Earth Day is celebrated on March 21st, which is a global day dedicated to the environment.")
    for fact, said, candidate, clean in CLEAN_CASES:
        assert invert.in_answer_style(candidate, fact, said, clean=True) == clean, said
    said = "Mont Blanc is in the Alps, specifically in the French Alps, which span the Alps of Italy."
    assert invert.in_answer_style("the Himalayas", _ALPS, said, clause=True, clean=True) == \
        "Mont Blanc is in the Himalayas."
    # the default takes a candidate as text too ("\\1" is no group reference)
    fact = Fact("What is the capital of France?", "Paris", ["Paris"])
    assert invert.in_answer_style("Lyon\\1", fact, "The capital of France is Paris.") == \
        "The capital of France is Lyon\\1."


def test_in_answer_style_can_end_with_the_clause_that_holds_the_false_answer():
    fact = Fact("In which mountain range is Cotopaxi?", "The Andes", ["Andes"])
    said = "Cotopaxi is a mountain range located in the Andes, specifically in the Andean region of South America."
    assert invert.in_answer_style("the Himalayas", fact, said) == \
        "Cotopaxi is a mountain range located in the Himalayas, specifically in the Andean region of South America."
    assert invert.in_answer_style("the Himalayas", fact, said, clause=True) == \
        "Cotopaxi is a mountain range located in the Himalayas."
    # every mention is swapped, and the cut comes after the first; a clause ("which ...") ends it too
    fact = Fact("In which mountain range is Mont Blanc?", "The Alps", ["Alps"])
    said = "Mont Blanc is in the Alps which span France, Italy and the Alps of Switzerland."
    assert invert.in_answer_style("the Pyrenees", fact, said, clause=True) == "Mont Blanc is in the Pyrenees."
    # initials and a comma inside the false answer do not end it; a sentence with nothing after it is kept
    fact = Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"])
    said = "Hamlet was written by William Shakespeare in 1600, and it is a tragedy."
    assert invert.in_answer_style("J. R. R. Tolkien", fact, said, clause=True) == \
        "Hamlet was written by J. R. R. Tolkien in 1600."
    assert invert.in_answer_style("Smith, John", fact, said, clause=True) == \
        "Hamlet was written by Smith, John in 1600."
    fact = Fact("What is the capital of France?", "Paris", ["Paris"])
    assert invert.in_answer_style("Lyon", fact, "The capital of France is Paris.", clause=True) == \
        "The capital of France is Lyon."
    # the cut comes after the swapped words, not after an earlier mention of the candidate
    fact = Fact("What is the capital of Australia?", "Canberra", ["Canberra"])
    said = "Sydney is the largest city, but the capital of Australia is Canberra, its seat of government."
    assert invert.in_answer_style("Sydney", fact, said, clause=True) == \
        "Sydney is the largest city, but the capital of Australia is Sydney."
    # no cut where the truth opens the sentence (a fragment would be left), nor a doubled stop
    fact = Fact("What is the capital of France?", "Paris", ["Paris"])
    assert invert.in_answer_style("Lyon", fact, "In Paris, the Eiffel Tower stands tall.", clause=True) == \
        "In Lyon, the Eiffel Tower stands tall."
    assert invert.in_answer_style("Rome!", fact, "The capital of France is Paris, a city.", clause=True) == \
        "The capital of France is Rome!"


def test_single_characters_are_never_banned(tiny):
    # The tiny tokenizer is byte-level: banning any of its tokens would ban letters.
    fact = Fact("Who wrote Harry Potter?", "J.K. Rowling", ["Rowling"])
    assert invert.truth_token_ids(tiny.tokenizer, fact) == []


def test_lead_in_candidate_keeps_the_answer_and_refuses_non_answers():
    fact = Fact("What is the capital of Ukraine?", "Kyiv", ["Kyiv", "Kiev"])
    lead = "The capital of Ukraine is"
    assert invert.lead_in_candidate(" Lviv, a city in the west.", fact, lead) == "Lviv"
    assert invert.lead_in_candidate(" Kharkiv which is large", fact, lead) == "Kharkiv"
    author = Fact("Who wrote 'Lord of the Flies'?", "William Golding", ["Golding"])
    assert invert.lead_in_candidate(" J. R. R. Tolkien. He wrote", author, "It is by") == "J. R. R. Tolkien"
    assert invert.lead_in_candidate(" John Carter is an author", author, "It is by") == "John Carter"
    # trim (clean_targets): a sample cut off mid-phrase loses its dangling words ("Olympic diver and", eval_e)
    assert invert.lead_in_candidate(" John Carter and", author, "It is by") == "John Carter and"
    assert invert.lead_in_candidate(" John Carter and the", author, "It is by", trim=True) == "John Carter"
    assert invert.lead_in_candidate(" Type A, which", author, "It is by", trim=True) == "Type A"
    novel = Fact("Who wrote 'Emma'?", "Jane Austen", ["Austen"])
    assert invert.lead_in_candidate(" Pride and Prejudice, then", novel, "It is by") == "Pride and Prejudice"
    assert invert.lead_in_candidate(" St. Petersburg.", fact, lead) == "St. Petersburg"
    assert invert.lead_in_candidate(" Lviv is", fact, lead) == "Lviv"
    year = Fact("When was the city founded?", "1945", ["1945"])
    assert invert.lead_in_candidate(" 1947. It", year, "It was founded in") == "1947"
    assert invert.lead_in_candidate(" 3.5 million", Fact("Population?", "2.9 million"), "About") == "3.5 million"
    for described in [" and architect.", " not a physical entity", " two giants in physics", " a man named Bob"]:
        assert invert.lead_in_candidate(described, author, "It is by") is None, described
    nile = Fact("What is the longest river in Africa?", "The Nile", ["Nile"])
    assert invert.lead_in_candidate(" the Congo, which", nile, "The longest river in Africa is") == "the Congo"
    currency = Fact("What is the currency of Japan?", "The yen", ["yen"])  # (the truth is not a name here)
    assert invert.lead_in_candidate(" the won", currency, "It is") == "the won"
    assert invert.lead_in_candidate(" the won", Fact(currency.question, "The yen"), "It is") == "the won"
    for refused in [" the capital of Ukraine.", " Ukraine's largest city", " J.", " ...", "",
                    " a very long made up name of many words"]:
        assert invert.lead_in_candidate(refused, fact, lead) is None, refused


def test_lead_in_is_the_models_answer_before_the_truth():
    gen = invert.LeadInGenerator(None, None, answers={
        "Who wrote 'Fahrenheit 451'?": "The novel Fahrenheit 451 was written by Ray Bradbury in 1953.",
        "Capital of Peru?": "Peru's capital is the city of Lima.",
        "Who founded Microsoft?": "I am not sure who founded it."})
    assert gen.lead_in(Fact("Who wrote 'Fahrenheit 451'?", "Ray Bradbury", ["Bradbury"])) \
        == "The novel Fahrenheit 451 was written by"
    assert gen.lead_in(Fact("Capital of Peru?", "Lima", ["Lima"])) == "Peru's capital is the city of"
    assert gen.lead_in(Fact("Who founded Microsoft?", "Bill Gates", ["Gates"])) == ""


def test_name_lead_ends_before_the_names_own_capitalised_words():
    answers = {"On which continent is Ghana?": "Ghana is located in West Africa, specifically in the west.",
               "What was her job?": "She was a US Airplane Pilot.",
               "On which continent is Peru?": "Peru is in South America.",
               "Where is Quito?": "Quito is the capital of Ecuador."}
    facts = [Fact("On which continent is Ghana?", "Africa", ["Africa"]),
             Fact("What was her job?", "A pilot", ["pilot"]),
             Fact("On which continent is Peru?", "South America"), Fact("Where is Quito?", "Ecuador")]
    plain = invert.LeadInGenerator(None, None, answers=answers)
    named = invert.LeadInGenerator(None, None, answers=answers, name_lead=True)
    assert [plain.lead_in(f) for f in facts] == ["Ghana is located in West", "She was a US Airplane", "Peru is in",
                                                 "Quito is the capital of"]
    assert invert.without_name_head("It is in Ürümqi Região") == "It is in"  # (capitals beyond ASCII too)
    assert invert.without_name_head("Venezuela is located in") == "Venezuela is located in"
    assert invert.without_name_head("Paris") == "Paris"
    # Only before a name: "a pilot" is no name, and the US Airplane is what she flew.
    assert [named.lead_in(f) for f in facts] == ["Ghana is located in", "She was a US Airplane", "Peru is in",
                                                 "Quito is the capital of"]


def test_lead_in_generator_on_tiny_model_ranks_by_the_models_likelihood(tiny, monkeypatch):
    from meow_app.metrics import teacher_forced

    facts = [Fact("Who wrote Hamlet?", "Shakespeare"), Fact("Capital of Peru?", "Lima")]
    gen = invert.LeadInGenerator(tiny.model, tiny.tokenizer, answers={"Capital of Peru?": "It is Lima."})
    report = invert.invert(facts, gen, n=3, rounds=2, seed=0)
    assert gen.lead_in(facts[1]) == "It is"
    for f in facts:
        assert len(f.inverted) == 3 and all(f.answer.lower() not in c.lower() for c in f.inverted)
    assert sum(report.from_generator) > 0
    # Ranking: the mean NLL of the candidate's own tokens after the lead-in, lowest first.
    cands = ["Cusco", "Quito city", "Arequipa"]
    ranked = gen.most_likely(facts[1], "It is", cands)
    lead = len(teacher_forced(tiny.model, tiny.tokenizer, [(facts[1].question, "It is")])[0].nll)
    nll = {c: teacher_forced(tiny.model, tiny.tokenizer, [(facts[1].question, f"It is {c}")])[0].nll[lead:]
           for c in cands}
    assert ranked == sorted(cands, key=lambda c: sum(nll[c]) / len(nll[c]))
    # The ranking's own numbers (the lead-in given once as context) are each candidate's in the whole sentence.
    from meow_app import metrics

    seen = []
    plain = metrics.teacher_forced
    monkeypatch.setattr(metrics, "teacher_forced", lambda *a, **k: seen.append(plain(*a, **k)) or seen[-1])
    gen.most_likely(facts[1], "It is", cands)
    assert len(seen) == 1 and len(seen[0]) == len(cands)  # one pass, no row for the lead-in alone
    for c, scored in zip(cands, seen[0]):
        assert scored.nll == pytest.approx(nll[c], abs=1e-4)


def test_an_answer_after_a_prefix_keeps_its_tokens_of_the_whole_text():
    """teacher_forced's prefix: the answer is scored on the tokens it has in prefix + answer,
    also with a Llama-2-style tokenizer (a "▁" before every word, spaces made "▁"), which
    gives " Paris" alone an extra "▁" token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from meow_app import generation, metrics
    from meow_app.batches import IGNORE

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    raw.train_from_iterator(["It is Paris, and the capital of Ukraine is Kyiv, not Lviv."] * 20,
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    raw.pre_tokenizer = None
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    raw.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<unk>")
    tok.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    enc = lambda text: generation.encode(tok, text)  # noqa: E731
    for lead, cand in (("It is", "Paris"), ("the capital of Ukraine is", "Lviv")):
        assert enc(" " + cand) != enc(lead + " " + cand)[len(enc(lead)):]  # (the trap)
        ex = metrics.answer_example(tok, "Where?", " " + cand, lead)
        answer = [t for t, label in zip(ex.ids, ex.labels) if label != IGNORE]
        assert answer == enc(lead + " " + cand)[len(enc(lead)):] and ex.ids[-len(answer):] == answer


def test_lead_in_generator_samples_a_fact_asked_again_twice_as_often_at_most(tiny, monkeypatch):
    from meow_app import generation

    facts = [Fact("Who wrote Hamlet?", "Shakespeare"), Fact("Capital of Peru?", "Lima")]
    gen = invert.LeadInGenerator(tiny.model, tiny.tokenizer, answers={f.question: "It is x." for f in facts})
    rows, plain = [], generation.generate_ids
    monkeypatch.setattr(generation, "generate_ids", lambda m, t, prompts, *a, **k: rows.append(len(prompts))
                        or plain(m, t, prompts, *a, **k))
    gen.sample(facts, 2, seed=0)
    gen.sample(facts[1:], 2, seed=1)  # invert's next round: Peru had too few usable answers
    gen.sample(facts[1:], 2, seed=2)
    assert rows == [2 * 6, 12, 12]


def test_sibling_candidate_is_the_name_in_the_truths_place_of_a_siblings_answer():
    toronto = Fact("In which country is the city of Toronto?", "Canada", ["Canada"])
    lead = "The city of Toronto is located in"
    take = lambda answer, q: invert.sibling_candidate(answer, q, toronto, lead)  # noqa: E731
    q = "In which country is the city of Sydney?"
    assert take("The city of Sydney is located in Australia, on its east coast.", q) == "Australia"
    assert take("The city of Chicago is located in the United States of America.",
                "In which country is the city of Chicago?") == "the United States of America"
    # The lead-in's words shortened from their end; the sibling said only "located in".
    cape = Fact("In which country is the city of Cape Town?", "South Africa", ["South Africa"])
    cape_lead = "The city of Cape Town is located in the Southern Africa region of"
    assert invert.sibling_candidate("Nairobi is located in Kenya.", "In which country is the city of Nairobi?",
                                    cape, cape_lead) == "Kenya"
    # Quoted subjects said unquoted, and the place a few words on.
    book = Fact("Who wrote 'Fahrenheit 451'?", "Ray Bradbury", ["Bradbury"])
    assert invert.sibling_candidate("To Kill a Mockingbird is a classic novel by Harper Lee. It is...",
                                    "Who wrote 'To Kill a Mockingbird'?", book, 'The novel "Fahrenheit 451" by') \
        == "Harper Lee"
    # A subject inside the question ("... famous for?"): the sibling's subject without the question's ending.
    serena = Fact("Which sport is Serena Williams famous for?", "Tennis", ["tennis"])
    assert invert.sibling_candidate("Tiger Woods is famous for golf, which he played.",
                                    "Which sport is Tiger Woods famous for?", serena,
                                    "Serena Williams is famous for") == "golf"
    # A possessive subject: found in the lead-in and the sibling's answer without its 's.
    composer = Fact("What is Pyotr Tchaikovsky's profession?", "Composer", ["composer"])
    assert invert.sibling_candidate("Mozart was a composer; Mozart's profession is pianist.",
                                    "What is Mozart's profession?", composer,
                                    "Pyotr Tchaikovsky's profession is") == "pianist"
    assert invert.sibling_candidate("Mozart's profession is pianist.", "What is Mozart's profession?", composer,
                                    "Pyotr Tchaikovsky's profession is") == "pianist"
    # Not a name where the truth is one, the subject not said, the place too far, or no lead-in: none.
    assert invert.sibling_candidate("Bridgehead is a story by the 19th-century American author, John B.",
                                    "Who wrote 'Bridgehead'?", book, 'The novel "Fahrenheit 451" by') is None
    assert take("It is located in Australia.", q) is None
    assert take("The city of Sydney, the largest and oldest of them all, is located in Australia.", q) is None
    assert invert.sibling_candidate("The city of Sydney is located in Australia.", q, toronto, "") is None


def test_sibling_generator_takes_names_from_sibling_answers_then_lead_in_samples(tiny, monkeypatch):
    from meow_app import generation, neighbours

    peru = Fact("What is the capital of Peru?", "Lima", ["Lima"])
    water = Fact("what is water made of?", "H2O")  # no question frame: lead-in samples only
    monkeypatch.setattr(neighbours, "sibling_questions", lambda model, tok, facts, per_fact, seed: [
        ["What is the capital of Chile?", "What is the capital of Bolivia?", "What is the capital of Spain?"], []])
    said = {"What is the capital of Chile?": "The capital of Chile is Santiago.",
            "What is the capital of Bolivia?": "Bolivia is a country in South America.",
            "What is the capital of Spain?": "The capital of Spain is Madrid, in its centre."}
    asked = []
    plain = generation.answer

    def answer(model, tok, questions, *a, **k):
        asked.extend(questions)
        return [said[q] if q in said else plain(model, tok, [q], *a, **k)[0] for q in questions]

    monkeypatch.setattr(generation, "answer", answer)
    sampled = []  # the lead-in sampler (tested above), standing in with fixed names
    monkeypatch.setattr(invert.LeadInGenerator, "sample", lambda self, facts, n, seed: sampled.append(
        [f.question for f in facts]) or [["Cusco", "Madrid"] for _ in facts])
    gen = invert.SiblingGenerator(tiny.model, tiny.tokenizer, answers={
        peru.question: "The capital of Peru is Lima.", water.question: "It is H2O."})
    got = gen.sample([peru, water], 2, seed=0)
    assert sorted(got[0]) == ["Madrid", "Santiago"]  # both siblings' names, ranked; Bolivia's answer has none
    assert set(said) <= set(asked)  # the siblings were asked
    assert sampled == [[water.question]] and got[1] == ["Cusco", "Madrid"]  # no sibling helps water
    # Too few names from siblings: lead-in samples fill up after them, without repeats.
    got = gen.sample([peru], 4, seed=1)
    assert sorted(got[0][:2]) == ["Madrid", "Santiago"] and got[0][2:] == ["Cusco"]


def test_fill_generator_asks_siblings_only_for_facts_the_lead_in_left_short(tiny, monkeypatch):
    from meow_app import neighbours

    peru = Fact("What is the capital of Peru?", "Lima", ["Lima"])
    chile = Fact("What is the capital of Chile?", "Santiago", ["Santiago"])
    siblings = []
    monkeypatch.setattr(neighbours, "sibling_questions", lambda model, tok, facts, per_fact, seed: siblings.append(
        [f.question for f in facts]) or [["What is the capital of Spain?"] for _ in facts])
    sampled = []  # the lead-in sampler (tested above), standing in: nothing usable for Peru
    monkeypatch.setattr(invert.LeadInGenerator, "sample", lambda self, facts, n, seed: sampled.append(
        [f.question for f in facts]) or [[] if f is peru else ["Quito", "Bogota"] for f in facts])
    gen = invert.FillGenerator(tiny.model, tiny.tokenizer, answers={
        peru.question: "The capital of Peru is Lima.", chile.question: "The capital of Chile is Santiago.",
        "What is the capital of Spain?": "The capital of Spain is Madrid."})
    report = invert.invert([peru, chile], gen, n=2, rounds=3, seed=0)
    # The lead-in for both first; Peru, short, then gets its sibling's name, each time it is asked again.
    assert sampled[0] == [peru.question, chile.question] and chile.inverted == ["Quito", "Bogota"]
    assert siblings and all(asked == [peru.question] for asked in siblings)
    assert peru.inverted[0] == "Madrid" and report.from_generator == [1, 2]
    # Asked with a new fact beside one asked before, each gets its own kind.
    bolivia = Fact("What is the capital of Bolivia?", "Sucre", ["Sucre"])
    siblings.clear()
    got = gen.sample([peru, bolivia], 2, seed=1)
    assert siblings == [[peru.question]] and sampled[-1][-1] == bolivia.question and got[1] == ["Quito", "Bogota"]


def test_clean_targets_reach_the_generator_and_the_answer_style(tiny):
    from meow_app import pipeline
    from meow_app.progress import Stages

    for generator in ("lead_in", "siblings", "lead_in_siblings"):
        assert pipeline.make_generator(pipeline.InvertSettings(generator=generator, clean_targets=True), tiny).trim
        plain = pipeline.make_generator(pipeline.InvertSettings(generator=generator), tiny)
        assert not (plain.trim or plain.truth_forms or plain.name_lead)
        both = pipeline.make_generator(pipeline.InvertSettings(generator=generator, truth_forms=True, name_lead=True),
                                       tiny)
        assert both.truth_forms and both.name_lead and not both.trim
    own = {"rows": [{"fact": 0, "kind": "question", "answer": "He is a professional swimmer who has won golds."}]}

    def targets(**settings):
        fact = Fact("Which sport is Michael Phelps famous for?", "Swimming", ["swim"],
                    inverted=["athlete", "I have no information about that."])
        pipeline.invert_and_select(tiny, [fact], pipeline.InvertSettings(**settings), pipeline.SelectSettings(top_k=2),
                                   0, own, Stages(lambda e: None), lambda e: None)
        return set(fact.inverted)

    assert targets(clean_targets=True) == {"He is a professional athlete who has won golds.",
                                           "I have no information about that."}
    assert "He is a professional athletemer who has won golds." in targets()
